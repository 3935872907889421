"""monolayer: confluence of label-free cell-culture images, from the command line."""

__version__ = "0.1.0"
