"""Making up for what was removed: bias and least-squares compensation, the data-free
moments, sequential reconstruction stage by stage, and edge (weight) sparsity with its
least-squares update."""
