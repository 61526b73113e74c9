"""Downloads of hub models into the HF cache."""
