"""Every op rule against the exactness oracle, the registry, the shape folder's evaluators."""
