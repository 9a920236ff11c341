"""Golden counts: MACs, parameters and prunable groups of every zoo model."""
