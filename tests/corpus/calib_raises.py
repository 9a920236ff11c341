"""Calibration functions that raise: at once, or after one good sample."""
import numpy as np


def data():
    raise RuntimeError("the dataset server is down")


def midway():
    yield {"input": np.zeros((1, 3, 4, 4), np.float32)}
    raise KeyError("image_0001.jpg")
