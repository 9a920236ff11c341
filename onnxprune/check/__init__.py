"""Proving the result: validation against the original in onnxruntime (fidelity, accuracy,
cost, latency), the centred similarity the stages share, and the console reports."""
