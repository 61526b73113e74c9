"""Ollama's HTTP API on the router port (routes.py), translated by convert.py."""
