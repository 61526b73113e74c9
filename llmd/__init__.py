"""llmd: one daemon that owns every llama-server on a machine and routes to them."""

__version__ = "0.1.0"
