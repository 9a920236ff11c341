"""Sensitivity sweeps."""
