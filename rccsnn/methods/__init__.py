"""Compression methods. A method is one file here with ``@METHODS.register("name")``; see :mod:`.base`."""
from rccsnn.methods.base import METHODS, CompressionMethod

__all__ = ["METHODS", "CompressionMethod"]
