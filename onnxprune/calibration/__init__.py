"""Calibration data and one onnxruntime pass over it: the sources (files, folders,
functions, readers; batching, sample axes, hold-out), the streaming per-channel
statistics, and the run that takes them."""
