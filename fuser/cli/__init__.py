"""The ``fuser`` command line: ``main`` and one module per command in ``commands/``."""

from .main import main

__all__ = ["main"]
