"""What the tests share: the graph builder, the exactness oracle, exporter variants,
random graphs, CLI fixtures and the repository's paths."""
