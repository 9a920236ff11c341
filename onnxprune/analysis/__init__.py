"""Finding the channel groups: the rules run over the graph, the couplings they
record settle into groups, and the costs (MACs, parameters) of the model."""
