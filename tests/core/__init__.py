"""Model I/O, external data, shapes, input data and sample axes, the layout algebra."""
