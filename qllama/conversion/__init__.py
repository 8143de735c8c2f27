"""Conversions between checkpoint files, streamed: what reads a format's tensors as
float32 rows, what writes them into another format, the drivers between them and
their reports. Layering (imports only point down): formats (layouts) <- io (files)
<- quant (arithmetic) <- conversion <- cli."""
