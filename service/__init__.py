"""mediamoderation: keeps known abuse media off a wiki."""

__version__ = "0.1.0"
