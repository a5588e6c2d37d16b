"""The HTTP, metrics and KV-event shells of a simulated server (the engine is elsewhere)."""
