"""Calibration sources and the streaming statistics."""
