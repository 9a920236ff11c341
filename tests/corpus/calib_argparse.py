"""A script that parses its own command line when imported (argparse prints a
usage text and exits with status 2)."""
import argparse

import numpy as np

parser = argparse.ArgumentParser(description="export calibration images")
parser.add_argument("--images", required=True)
args = parser.parse_args()


def data():
    yield {"input": np.zeros((1, 3, 4, 4), np.float32)}
