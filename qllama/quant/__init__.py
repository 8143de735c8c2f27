"""Weights to Q8_0: the group-size rule (`groups`) and the streaming file
quantizer (`pipeline`); the per-group arithmetic is the Cython kernel
`qllama._kernels.quantize_weights`."""
