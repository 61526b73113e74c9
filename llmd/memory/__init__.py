"""Memory: devices, the books, estimates and GGUF metadata, the prompt cache."""
