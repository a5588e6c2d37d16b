"""The plugin-author API: base protocol, typed names and the registry."""
