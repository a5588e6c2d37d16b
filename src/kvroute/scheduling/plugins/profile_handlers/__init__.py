"""Built-in scheduling profile handlers."""
