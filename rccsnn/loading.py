"""Load any model file rccsnn accepts, whatever wrote it: the one entry point of evaluate, report, export,
compress, sweep and the benchmarks.

* a compact file (``rccsnn export``, :mod:`rccsnn.formats.compact`), recognised without unpickling it;
* an rccsnn checkpoint (:mod:`rccsnn.models.checkpoint`);
* a bare state_dict, or a dict with a ``state_dict`` key, plus ``model="package.module:factory"``;
* a whole pickled ``nn.Module``, only with ``trust=True`` (unpickling it runs code stored in the file).

Every file is read with ``torch.load(weights_only=True)`` first, so nothing in it runs unless ``trust`` says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rccsnn.formats.compact import is_compact_file, load_compact
from rccsnn.models.checkpoint import LoadedModel, ModelSpec, load_checkpoint


def load_model(path: str | Path, model: Optional[str] = None, trust: bool = False,
               fallback: Optional[ModelSpec] = None) -> LoadedModel:
    """The network in ``path`` in eval mode, with its spec and whatever else the file recorded.

    Args:
        path: a compact file, a checkpoint, a state_dict (needs ``model``) or a pickled module (needs ``trust``).
        model: ``package.module:factory`` of a user architecture; calling it is the user's explicit choice.
        trust: allow unpickling arbitrary objects (runs code from the file).
        fallback: the spec of files that record none (state_dicts and pickled modules).

    Raises:
        UserError: one line, for a missing, unreadable, untrusted or corrupt file.
    """
    if is_compact_file(path):
        return load_compact(path, model=model)
    return load_checkpoint(path, model=model, trust=trust, fallback=fallback)


__all__ = ["load_model"]
