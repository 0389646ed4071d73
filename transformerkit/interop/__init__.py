"""Reading and writing other tools' checkpoints: Hugging Face and sentence-transformers folders, GGUF files."""
