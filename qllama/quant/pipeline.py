"""The streaming quantizer's old address: quantize_file lives in qllama.conversion.llama2c
(the llama2.c → llama2.c driver); kept for the callers that import it from here."""
from ..conversion.llama2c import quantize_file  # noqa: F401
