"""rccsnn: resource-constrained compression of spiking neural networks.

The library calls, one per command of the CLI (:mod:`rccsnn.api` documents them)::

    rccsnn.train(recipe)                           # -> TrainResult
    rccsnn.compress(model, {"params": 0.05})       # -> RunResult
    rccsnn.evaluate(model)                         # -> dict: accuracy, weights, MACs, firing rates
    rccsnn.report(model)                           # -> dict: per-layer weights, MACs, SynOps, energy, bytes
    rccsnn.export(model, "out.compact.pt")         # -> ExportResult

They load on first use, so ``import rccsnn`` (and ``rccsnn --help``) does not import torch.
"""
from typing import Any

from rccsnn.version import __version__

__all__ = ["__version__", "compress", "evaluate", "export", "report", "train"]


def __getattr__(name: str) -> Any:
    if name in ("compress", "evaluate", "export", "report", "train"):
        from rccsnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'rccsnn' has no attribute '{name}'")
