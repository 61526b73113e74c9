"""llama-server children: the process, its port, its chat template, the client."""
