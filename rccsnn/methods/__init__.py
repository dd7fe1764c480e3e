"""Compression methods. A method is one file here with ``@METHODS.register("name")``; see :mod:`.base`."""
from rccsnn.methods.base import (METHODS, CompressionMethod, Constraint, Problem, PruningMethod, TimeSteps,
                                 TrainingLoop)
from rccsnn.methods import criticality, gmp, magnitude, minimax  # noqa: E402,F401  (registers the methods)

__all__ = ["METHODS", "CompressionMethod", "Constraint", "Problem", "PruningMethod", "TimeSteps", "TrainingLoop"]
