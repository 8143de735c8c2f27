"""The streaming quantizer's old address: quantize_file and its Report live in
qllama.conversion (the llama2.c → llama2.c driver); kept for the callers that import
them from here."""
from ..conversion.llama2c import quantize_file  # noqa: F401
from ..conversion.report import KindStats, Report  # noqa: F401
