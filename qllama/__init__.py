"""qllama: quantize llama2.c checkpoints to int8 (Q8_0) and run them fast on CPUs.

    model = qllama.load("stories15M.q80.bin", tokenizer="tokenizer.model")
    for piece in model.generate("Once upon a time", steps=64, temperature=0):
        print(piece, end="")
"""
from .errors import FormatError, QllamaError, TokenizerError, UsageError
from .model import load
from .tokenizer import load_tokenizer

__all__ = ["load", "QllamaError", "FormatError", "TokenizerError", "UsageError"]
__version__ = "0.1.0"
