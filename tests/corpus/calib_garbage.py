"""Calibration functions that return something other than {input: array} dicts."""


def number():
    return 42


def strings():
    return ["not", "a", "dict"]


def text_arrays():
    return [{"input": "a picture of a cat"}]


def nothing():
    return []
