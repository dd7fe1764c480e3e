"""What a weight costs to store in the compact format: its layout rule and byte counts, without writing anything.

The compact export (:mod:`rccsnn.formats.compact`) writes each conv/linear weight dense, or as its nonzero values plus
the cheaper of a bitmask and delta-coded gaps, whichever is smaller; the ``memory`` resource
(:class:`rccsnn.resources.Memory`) counts the same bytes. Both ask this module, so the count is the file's by
construction (tests/test_quant.py checks it against the entries the export writes).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from torch import Tensor

from rccsnn.quant import FLOAT_BITS

#: Widths a delta-coded index list may use, tried in this order; the cheapest wins.
DELTA_DTYPES = (np.uint8, np.uint16, np.uint32)


def delta_nbytes(indices: np.ndarray, dtype) -> int:
    """Bytes the delta codes of the sorted flat ``indices`` take at ``dtype`` (gaps of ``dtype``'s maximum or more
    take escape codes; :func:`rccsnn.formats.compact.delta_encode`)."""
    top = int(np.iinfo(dtype).max)
    gaps = np.diff(np.asarray(indices, dtype=np.int64), prepend=-1) - 1
    return int(indices.size + (gaps // top).sum()) * np.dtype(dtype).itemsize


def index_nbytes(mask: np.ndarray) -> int:
    """Bytes of the index code the export writes for a boolean ``mask``: the cheaper of a bitmask and delta codes."""
    flat = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    indices = np.flatnonzero(flat)
    return min([(flat.size + 7) // 8] + [delta_nbytes(indices, dtype) for dtype in DELTA_DTYPES])


def stored_sparse(index_bytes: int, nonzero: int, n: int, itemsize: float) -> bool:
    """Whether a weight is stored as its nonzeros plus an index (else dense): whichever stores fewer bytes."""
    return index_bytes + nonzero * itemsize < n * itemsize


def weight_nbytes(weight: Tensor, bits: Optional[int] = None) -> int:
    """Bytes the export writes for ``weight``: float32 values, or its codes packed at ``bits`` (< 32) with one float32
    scale per output channel; values, index and scales."""
    packed = bits is not None and bits < FLOAT_BITS
    mask = (weight.detach().reshape(-1) != 0).cpu().numpy()
    n, nonzero = mask.size, int(mask.sum())
    itemsize = bits / 8.0 if packed else 4
    index = index_nbytes(mask)
    sparse = stored_sparse(index, nonzero, n, itemsize)
    count = nonzero if sparse else n
    values = (count * bits + 7) // 8 if packed else count * 4
    scales = 4 * int(weight.shape[0]) if packed else 0
    return values + (index if sparse else 0) + scales
