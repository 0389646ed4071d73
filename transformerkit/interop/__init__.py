"""Reading and writing other tools' checkpoints: Hugging Face folders and GGUF files."""
