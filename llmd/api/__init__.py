"""The HTTP surfaces: the router, the control API, the proxy, metrics, descriptions."""
