"""File layouts, one module per origin: llama2c (versions 0, 1, 2: the files qllama
reads, writes and runs), rope (version 0's rotary tables)."""
