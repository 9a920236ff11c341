"""The --auto loop."""
