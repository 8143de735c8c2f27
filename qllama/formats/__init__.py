"""File layouts, one module per origin: llama2c (versions 0, 1, 2: the files qllama
reads, writes and runs), rope (version 0's rotary tables), gguf (the names and keys
qllama writes and reads), gguf_file (GGUF's container, parsed with bounds), gguf_types
(its block types' layouts: quant.types builds on them; formats imports nothing of
quant), gguf_reader (a llama GGUF file as a model), hf and safetensors (imports)."""
from __future__ import annotations

import os


def is_gguf(path: str | os.PathLike, error=None) -> bool:
    """Whether a regular file starts with GGUF's magic (llama2.c files never do: their
    first int32 is a dimension or "ak42"); `error` is the exception for a path that is
    not a regular file (default FormatError)."""
    from ..errors import FormatError
    from ..io.inputs import open_regular, pread_head
    from .gguf_file import MAGIC

    path = os.fspath(path)
    fd, size = open_regular(path, error or FormatError)
    try:
        return size >= len(MAGIC) and pread_head(fd, len(MAGIC), path) == MAGIC
    finally:
        os.close(fd)


def open_model(path: str | os.PathLike):
    """A validated, mapped model file: a gguf_reader.GGUFModel for a GGUF file, else a
    llama2c.ModelFile. Both have .spec, .tensor(name, layer), .has(name), .buffer and
    .close()."""
    if is_gguf(path):
        from .gguf_reader import GGUFModel
        return GGUFModel(path)
    from .llama2c import ModelFile
    return ModelFile(path)
