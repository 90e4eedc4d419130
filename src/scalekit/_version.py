"""The single source of scalekit's version."""

__version__ = "0.1.0.dev0"
