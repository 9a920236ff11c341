"""The foundation every stage stands on: errors, model I/O and external data, the
read-only graph index, the one subgraph walker, shapes, onnxruntime sessions,
input data, the layout algebra of channel atoms, weight tracing. Knows no stage."""
