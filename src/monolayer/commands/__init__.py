"""The logic of each subcommand, free of typer and rich: generators of records.

Each function here takes plain arguments and yields JSON-ready records (dicts);
records for items that failed carry an ``error`` field. The CLI layer decides
how they are written, shown and turned into an exit code.
"""
