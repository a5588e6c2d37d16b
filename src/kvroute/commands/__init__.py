"""One module per ``kvroute`` subcommand: ``configure(parser)`` and ``run(args) -> int``."""
