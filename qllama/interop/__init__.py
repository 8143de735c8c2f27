"""Other formats in and out: Hugging Face folders to llama2.c files (`hf_import`),
llama2.c files to Hugging Face folders (`hf_export`) and to GGUF (`gguf_export`).
The layouts themselves are described in qllama.formats (hf, gguf, llama2c)."""
