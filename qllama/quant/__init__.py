"""Weights to quantized types: the group-size rule (`groups`), GGUF's block types
(`types`) and their numpy quantizers (`blocks`), importance from a calibration text
(`imatrix`); the Q8_0 per-group arithmetic is the Cython kernel
`qllama._kernels.quantize_weights`, the streaming file quantizer `conversion.llama2c`."""
