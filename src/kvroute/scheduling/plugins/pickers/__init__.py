"""Built-in scheduling pickers."""
