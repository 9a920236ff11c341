"""The repair stage (``--repair STEPS``, the ``onnxprune[repair]`` extra):
fine-tune a pruned model's kept weights to reproduce the original's outputs
on the calibration data, through a differentiable interpreter of the graph
itself (``interpret.py``, running the op table in ``torch_ops.py``), checked
against onnxruntime before anything is trained (``train.py``).

torch is imported here only: the pipeline imports this package when the
repair is asked for, so the base install never needs it.
"""
