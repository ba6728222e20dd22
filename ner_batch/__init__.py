"""nerbatch: batch named-entity recognition."""

__version__ = "0.1.0"
