"""The command-line layer: thin typer modules, one per subcommand; rich output on stderr only."""
