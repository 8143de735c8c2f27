"""qllama: quantize llama2.c checkpoints to int8 (Q8_0) and run them fast on CPUs.

    model = qllama.load("stories15M.q80.bin", tokenizer="tokenizer.model")
    for piece in model.generate("Once upon a time", steps=64, temperature=0):
        print(piece, end="")
"""
from .threads import configure_openmp

configure_openmp()  # before any kernel module loads libgomp

from ._kernels.sigbus import bus_errors_reported  # noqa: E402
from .errors import FormatError, QllamaError, TokenizerError, UsageError  # noqa: E402
from .model import load  # noqa: E402
from .tokenizer import load_tokenizer  # noqa: E402

__all__ = ["load", "load_tokenizer", "bus_errors_reported", "QllamaError", "FormatError",
           "TokenizerError", "UsageError"]
__version__ = "0.1.0"
