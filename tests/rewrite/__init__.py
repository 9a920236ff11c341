"""The exactness oracle (pruned == masked) on every model, and what a written model must satisfy."""
