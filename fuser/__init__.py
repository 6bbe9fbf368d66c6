"""fuser: graph compiler and operator-fusion optimizer for CNNs."""
__version__ = "0.1.0"
