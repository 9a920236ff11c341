"""onnxprune's tests, one package per stage of the code they test."""
