"""Built-in scheduling scorers."""
