"""Applying a plan: every stored weight sliced once at its source, the attributes and
shape constants the rules name rewritten, the invariants every pruned model must
satisfy, and the graph inputs/outputs a plan may change (KV caches)."""
