import os

# Strict mode: an exception inside an op rule fails the test instead of
# freezing the group (a rule's bug must fail a test, not hide as a freeze).
os.environ.setdefault("ONNXPRUNE_STRICT", "1")
