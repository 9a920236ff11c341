"""A calibration module that cannot even be imported."""
import numpy as np

raise ImportError("No module named 'torchvision'")


def data():
    yield {"input": np.zeros((1, 3, 4, 4), np.float32)}
