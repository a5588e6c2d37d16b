"""Built-in scheduling filters."""
