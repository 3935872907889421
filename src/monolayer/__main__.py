"""Allow ``python -m monolayer``."""

from monolayer.cli.app import main

main()
