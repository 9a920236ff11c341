"""Whole models from many exporters: wild fixtures, transformers, optimum exports, random graphs."""
