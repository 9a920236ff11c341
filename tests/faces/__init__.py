"""The CLI and the Python API: commands, bad input, docs and the mutant table."""
