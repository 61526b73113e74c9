"""llmctl: the command-line client for llmd's control socket."""
