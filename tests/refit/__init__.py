"""Compensation, sequential reconstruction, data-free moments, edge sparsity."""
