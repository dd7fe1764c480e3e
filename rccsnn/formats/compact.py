"""The compact sparse file format: the index and value codecs, planning, writing, reading and loading.

**Compact format.** A compact file is written with ``torch.save`` and holds only tensors and plain data, so
``torch.load(path, weights_only=True)`` reads it without running code. It is the checkpoint dict with
``state_dict`` replaced by ``tensors``::

    {
      "format": "rccsnn-compact", "format_version": 2,        # always the first key (see is_compact_file)
      "rccsnn_version": "0.1.0", "checkpoint_format_version": 1,
      "arch", "arch_args", "data", "T", "encoding", "loss", "neuron", "metrics", "recipe", ["compression"],
                                                             # as in the checkpoint (metrics: the source's)
      "export": {"dtype": "float32", "per_channel": False,
                 "accuracy": {"split": "test", "before": 0.99, "after": 0.99} | None},
      "tensors": {state_dict key: entry},
      "checksum": "<sha256 hex of every entry, see tensor_digest>",
      "blob": uint8 tensor, "blob_bytes": int,                # version 2: every entry's tensors, deflated
    }

In version 2 each tensor of an entry is written as a reference ``{"blob": [offset, bytes], "dtype", "shape"}`` into
one buffer (:func:`pack_blob`), stored zlib-compressed as ``blob`` (``blob_bytes`` long once inflated): one zip member
instead of one per tensor, whose headers (about 300 bytes each) cost a small model more than its index codes, and the
bitmasks and raw float tensors deflate. :func:`read_compact` puts the tensors back, so everything after it (and the
checksum, taken over the entries with their tensors) is as in version 1, which it still reads.

Every conv/linear weight is an entry with ``shape`` and ``dtype`` (of the decoded tensor), ``values`` (1-D,
float32, float16 or int8) and one of three ``encoding`` s, whichever stores fewer bytes:

* ``dense``: ``values`` holds every element in C order.
* ``bitmask``: ``values`` holds the nonzero elements in C order; ``bitmask`` (uint8, ``ceil(n / 8)`` bytes) is
  ``np.packbits`` of the flattened mask ``W != 0`` (big-endian bit order, zero padding bits).
* ``delta``: ``values`` as for bitmask; ``deltas`` (uint8, uint16 or uint32, the cheapest for this tensor) codes
  the sorted flat indices ``i_0 < i_1 < ...`` of the nonzeros by their gaps ``g_k = i_k - i_{k-1} - 1``
  (``i_{-1} = -1``). A gap is written as ``g // M`` escape codes ``M`` (the dtype's maximum) followed by
  ``g % M``; so every code below ``M`` ends one index and ``i_k = (sum of all codes up to it) + k``.

With ``int8`` values an entry also has ``scale`` (float32; a scalar, or one per output channel, i.e. per index of
dim 0, with ``--per-channel``): ``w = q * scale``, symmetric, ``scale = max |w| / 127``.

A weight whose layer the model quantized to ``b < 32`` bits (``ModelSpec.bits``, :mod:`rccsnn.quant`) is stored at
those bits whatever ``--dtype`` says: ``values`` is then a uint8 tensor of the codes packed ``b`` bits each
(two's complement, most significant bit first, ``np.packbits`` order, zero padding), the entry has ``bits`` (b) and
``scale`` (float32, one per output channel) and ``w = code * scale[channel]``; the codes are the layer's own grid
(:func:`rccsnn.quant.integers`), so nothing is lost beyond float rounding of the scale. Every other tensor
(biases, BatchNorm, counters) is stored as it is: ``{"encoding": "raw", "value": tensor}``.
"""
from __future__ import annotations

import hashlib
import os
import pickletools
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from rccsnn.errors import UserError
from rccsnn.rundir import publish
from rccsnn.models.checkpoint import FORMAT, LoadedModel, atomic_save, checkpoint_dict, from_checkpoint, read_raw
from rccsnn.quant import FLOAT_BITS, integers
from rccsnn.snn import weight_layers
from rccsnn.storage import DELTA_DTYPES, delta_nbytes, stored_sparse

COMPACT_FORMAT = "rccsnn-compact"
COMPACT_VERSION = 2
#: zlib level of a version 2 blob (6, zlib's default: level 9 is a few % smaller and several times slower to write).
ZLIB_LEVEL = 6
VALUE_DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
_DELTA_TORCH = {torch.uint8: np.uint8, torch.uint16: np.uint16, torch.uint32: np.uint32}
INDEX_ENCODINGS = ("bitmask", "delta")
#: Keys of the checkpoint dict that a compact file has under other names (its own header) or replaced (tensors).
_CHECKPOINT_ONLY = ("format", "format_version", "rccsnn_version", "state_dict")
#: Keys of a compact file that its checkpoint dict does not have.
_COMPACT_ONLY = ("format", "format_version", "tensors", "checksum", "export")


# ============================================================================================ index coding
def delta_encode(indices: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """Sorted, distinct flat indices ``[k]`` -> gap codes of ``dtype`` with escapes (see the module docstring)."""
    top = int(np.iinfo(dtype).max)
    gaps = np.diff(np.asarray(indices, dtype=np.int64), prepend=-1) - 1
    escapes = gaps // top
    lengths = escapes + 1
    codes = np.full(int(lengths.sum()), top, dtype=dtype)
    codes[np.cumsum(lengths) - 1] = gaps - escapes * top
    return codes


def delta_decode(codes: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`delta_encode`: int64 flat indices; ``ValueError`` if they do not fit ``n`` elements."""
    top = int(np.iinfo(codes.dtype).max)
    if codes.size and int(codes[-1]) == top:
        raise ValueError("the index list ends inside an escape")
    ends = np.flatnonzero(codes != top)
    indices = np.cumsum(codes, dtype=np.int64)[ends] + np.arange(ends.size, dtype=np.int64)
    if indices.size and int(indices[-1]) >= n:
        raise ValueError(f"index {int(indices[-1])} beyond the tensor's {n} elements")
    return indices


@dataclass
class IndexCode:
    """Where the nonzeros of a tensor are: ``kind`` ``bitmask`` (``data`` = packed bits) or ``delta`` (gap codes)."""

    kind: str
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def encode_mask(mask: np.ndarray) -> IndexCode:
    """The cheaper of a bitmask and a delta-coded index list (uint8/16/32) for a boolean mask of any shape.

    Ties go to the bitmask. Costs: bitmask ``ceil(n / 8)`` bytes; delta ``(k + escapes) * width``.
    """
    flat = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    indices = np.flatnonzero(flat)
    best_kind, best_dtype, best = "bitmask", None, (flat.size + 7) // 8
    for dtype in DELTA_DTYPES:
        size = delta_nbytes(indices, dtype)
        if size < best:
            best_kind, best_dtype, best = "delta", dtype, size
    if best_kind == "bitmask":
        return IndexCode("bitmask", np.packbits(flat))
    return IndexCode("delta", delta_encode(indices, best_dtype))


def decode_mask(code: IndexCode, n: int) -> np.ndarray:
    """Sorted int64 flat indices of the nonzeros; ``ValueError`` on codes that do not fit ``n``."""
    if code.kind == "bitmask":
        if code.data.dtype != np.uint8 or code.data.ndim != 1 or code.data.size != (n + 7) // 8:
            raise ValueError(f"bitmask of {code.data.size} bytes does not fit {n} elements")
        bits = np.unpackbits(code.data)
        if bits[n:].any():
            raise ValueError("bitmask has padding bits set")
        return np.flatnonzero(bits[:n]).astype(np.int64)
    if code.kind == "delta":
        if code.data.dtype.type not in DELTA_DTYPES or code.data.ndim != 1:
            raise ValueError(f"delta codes must be a 1-D uint8/16/32 array, got {code.data.dtype}")
        return delta_decode(code.data, n)
    raise ValueError(f"unknown index encoding '{code.kind}'")


# ============================================================================================ tensor entries
def _channels_of(positions: np.ndarray, shape: Sequence[int]) -> Tensor:
    n = int(np.prod(shape, dtype=np.int64))
    per_channel = n // shape[0] if n else 1
    return torch.from_numpy(positions // per_channel)


def _quantize(values: Tensor, positions: np.ndarray, weight: Tensor, dtype: str, per_channel: bool):
    """Stored values (and int8 scale) of the float32 ``values`` found at ``positions`` of ``weight``."""
    if dtype == "float32":
        return values.to(torch.float32), None
    if dtype == "float16":
        half = values.to(torch.float16)
        if not torch.isfinite(half).all() and torch.isfinite(values).all():
            raise UserError(f"weights up to {values.abs().max().item():.3g} do not fit float16 (max 65504)")
        return half, None
    if per_channel:
        c = weight.shape[0]
        peak = weight.detach().float().reshape(c, -1).abs().amax(1) if weight.numel() else torch.zeros(c)
        scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak)).to(torch.float32)
        per_value = scale[_channels_of(positions, weight.shape)]
    else:
        peak = weight.detach().float().abs().max() if weight.numel() else torch.zeros(())
        scale = (peak / 127.0 if peak > 0 else torch.ones(())).to(torch.float32).reshape(())
        per_value = scale
    q = torch.round(values.to(torch.float32) / per_value).clamp_(-127, 127).to(torch.int8)
    return q, scale


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed integer codes (each in ``-2^(b-1) .. 2^(b-1) - 1``) packed ``bits`` bits each into uint8."""
    unsigned = codes.astype(np.int64) & ((1 << bits) - 1)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    out = []
    for start in range(0, unsigned.size, 1 << 20):  # chunks: the bit matrix is ``bits`` bytes per code
        chunk = unsigned[start:start + (1 << 20)]
        out.append(((chunk[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1))
    return np.packbits(np.concatenate(out) if out else np.zeros(0, np.uint8))


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` signed codes :func:`pack_codes` packed (int64)."""
    if packed.size * 8 < count * bits:
        raise ValueError(f"{packed.size} bytes hold fewer than {count} codes of {bits} bits")
    matrix = np.unpackbits(packed)[:count * bits].reshape(count, bits).astype(np.int64)
    unsigned = matrix @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return np.where(unsigned >= 1 << (bits - 1), unsigned - (1 << bits), unsigned)


def encode_weight(weight: Tensor, dtype: str = "float32", per_channel: bool = False,
                  bits: Optional[int] = None) -> Dict[str, Any]:
    """A weight tensor as a compact entry: dense, or nonzero values + the cheaper index code, whichever is smaller.
    With ``bits`` (< 32) the values are the weight's codes at that width, packed (see the module docstring)."""
    if dtype not in VALUE_DTYPES:
        raise UserError(f"unknown value dtype '{dtype}' (use {', '.join(VALUE_DTYPES)})")
    packed = bits is not None and bits < FLOAT_BITS
    w = weight.detach().cpu().contiguous()
    flat = w.reshape(-1)
    n = flat.numel()
    mask = (flat != 0).numpy()
    itemsize = bits / 8.0 if packed else torch.empty((), dtype=VALUE_DTYPES[dtype]).element_size()
    code = encode_mask(mask)
    if stored_sparse(code.nbytes, int(mask.sum()), n, itemsize):
        positions = np.flatnonzero(mask).astype(np.int64)
        encoding = code.kind
    else:
        positions = np.arange(n, dtype=np.int64)
        encoding = "dense"
    if packed:
        codes, scale = integers(w, bits)
        values = torch.from_numpy(pack_codes(codes.reshape(-1).numpy()[positions], bits))
    else:
        values, scale = _quantize(flat[torch.from_numpy(positions)], positions, w, dtype, per_channel)
    entry: Dict[str, Any] = {"encoding": encoding, "shape": list(w.shape), "dtype": str(w.dtype).replace("torch.", ""),
                             "values": values}
    if packed:
        entry["bits"] = int(bits)
    if scale is not None:
        entry["scale"] = scale
    if encoding == "bitmask":
        entry["bitmask"] = torch.from_numpy(code.data)
    elif encoding == "delta":
        entry["deltas"] = torch.from_numpy(code.data)
    return entry


def entry_nbytes(entry: Dict[str, Any]) -> int:
    """Bytes of the tensors of one entry (values, index, scale; or the raw tensor)."""
    return sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, Tensor))


def decode_entry(entry: Any) -> Tensor:
    """The tensor an entry stands for; ``ValueError`` with the reason when the entry is malformed."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry is a {type(entry).__name__}, not a dict")
    encoding = entry.get("encoding")
    if encoding == "raw":
        value = entry.get("value")
        if not isinstance(value, Tensor):
            raise ValueError("raw entry without a tensor")
        return value
    if encoding not in ("dense",) + INDEX_ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}")
    shape, dtype_name, values = entry.get("shape"), entry.get("dtype"), entry.get("values")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                               for s in shape):
        raise ValueError(f"bad shape {shape!r}")
    dtype = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"bad dtype {dtype_name!r}")
    bits = entry.get("bits")
    if bits is not None and (not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16):
        raise ValueError(f"bad bits {bits!r}")
    if bits is not None and (not isinstance(values, Tensor) or values.dim() != 1 or values.dtype != torch.uint8):
        raise ValueError("packed values must be a 1-D uint8 tensor")
    if bits is None and (not isinstance(values, Tensor) or values.dim() != 1
                         or values.dtype not in VALUE_DTYPES.values()):
        raise ValueError("values must be a 1-D float32, float16 or int8 tensor")
    n = int(np.prod(shape, dtype=np.int64))
    if encoding == "dense":
        positions = np.arange(n, dtype=np.int64)
    else:
        key = "bitmask" if encoding == "bitmask" else "deltas"
        data = entry.get(key)
        if not isinstance(data, Tensor) or (encoding == "bitmask" and data.dtype != torch.uint8) or (
                encoding == "delta" and data.dtype not in _DELTA_TORCH):
            raise ValueError(f"missing or mistyped '{key}'")
        positions = decode_mask(IndexCode(encoding, data.numpy()), n)
    if bits is not None:
        values = torch.from_numpy(unpack_codes(values.numpy(), bits, positions.size)).to(torch.int32)
        if (values.numel() * bits + 7) // 8 != entry["values"].numel():
            raise ValueError(f"{entry['values'].numel()} packed bytes for {positions.size} codes of {bits} bits")
    if positions.size != values.numel():
        raise ValueError(f"{values.numel()} values for {positions.size} positions")
    scale = entry.get("scale")
    if bits is not None:
        if not isinstance(scale, Tensor) or scale.dtype != torch.float32 or len(shape) == 0 or \
                tuple(scale.shape) != (shape[0],):
            raise ValueError("packed values need a float32 scale per output channel")
        floats = values.to(torch.float32) * scale[_channels_of(positions, shape)]
    elif values.dtype == torch.int8:
        if not isinstance(scale, Tensor) or scale.dtype != torch.float32 or not (
                scale.dim() == 0 or (len(shape) > 0 and tuple(scale.shape) == (shape[0],))):
            raise ValueError("int8 values need a float32 scale (a scalar or one per output channel)")
        per_value = scale if scale.dim() == 0 else scale[_channels_of(positions, shape)]
        floats = values.to(torch.float32) * per_value
    else:
        if scale is not None:
            raise ValueError("a scale belongs to int8 values only")
        floats = values
    if encoding == "dense":
        return floats.to(dtype).reshape(shape)
    out = torch.zeros(n, dtype=dtype)
    out[torch.from_numpy(positions)] = floats.to(dtype)
    return out.reshape(shape)


def tensor_digest(tensors: Dict[str, Any]) -> str:
    """sha256 over every entry (names, fields, dtypes, shapes and bytes), in sorted order.

    torch's zip reader does not verify CRCs, so without this a flipped byte in a tensor would load silently.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        entry = tensors[name]
        items = sorted(entry.items()) if isinstance(entry, dict) else [("", entry)]
        for key, value in items:
            if isinstance(value, Tensor):
                h.update(f"{name}\0{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
                h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            else:
                h.update(f"{name}\0{key}\0{value!r}\0".encode())
    return h.hexdigest()


# ============================================================================================ the blob (version 2)
def pack_blob(tensors: Dict[str, Any]) -> Tuple[Dict[str, Any], Tensor]:
    """Every tensor of every entry moved into one uint8 ``blob``, each replaced by a reference
    ``{"blob": [offset, bytes], "dtype": name, "shape": [...]}``, in sorted entry and field order.

    One tensor in the file instead of two or three per state_dict entry: torch.save writes each tensor as a zip
    member with its own headers (about 300 bytes), which on a small model cost more than its index codes.
    """
    chunks: List[np.ndarray] = []
    at = 0
    packed: Dict[str, Any] = {}
    for name in sorted(tensors):
        fields = {}
        for key, value in tensors[name].items():
            if isinstance(value, Tensor):
                raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                fields[key] = {"blob": [at, int(raw.size)], "dtype": str(value.dtype).replace("torch.", ""),
                               "shape": list(value.shape)}
                chunks.append(raw)
                at += int(raw.size)
            else:
                fields[key] = value
        packed[name] = fields
    blob = torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, np.uint8))
    return packed, blob


def deflate(blob: Tensor) -> Tensor:
    """``blob`` compressed with zlib (deflate, RFC 1950), as a uint8 tensor: lossless, and on a sparse quantized model
    about 15 % smaller (the bitmasks and the raw float tensors compress; packed codes little)."""
    return torch.frombuffer(bytearray(zlib.compress(blob.numpy().tobytes(), ZLIB_LEVEL)), dtype=torch.uint8)


def inflate(data: Any, size: Any) -> Tensor:
    """The ``size`` bytes :func:`deflate` compressed into ``data``; ``ValueError`` if it does not decompress to exactly
    that many (never more are decompressed)."""
    if not isinstance(data, Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError("no uint8 blob")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < sys.maxsize:
        raise ValueError(f"bad blob size {size!r}")
    try:
        d = zlib.decompressobj()
        # max_length 0 would mean no limit: an empty blob may decompress to one byte at most, which fails below
        out = d.decompress(data.numpy().tobytes(), max(size, 1))
    except zlib.error as exc:
        raise ValueError(f"the blob does not decompress ({exc})") from None
    if len(out) != size or d.unconsumed_tail or d.unused_data or not d.eof:
        raise ValueError(f"the blob does not decompress to its {size} bytes")
    return torch.frombuffer(bytearray(out), dtype=torch.uint8) if size else torch.zeros(0, dtype=torch.uint8)


def unpack_blob(packed: Dict[str, Any], blob: Any) -> Dict[str, Any]:
    """The entries :func:`pack_blob` packed, with their tensors again; ``ValueError`` on a reference outside the blob
    or of an unknown dtype."""
    if not isinstance(blob, Tensor) or blob.dtype != torch.uint8 or blob.dim() != 1:
        raise ValueError("no uint8 blob")
    out: Dict[str, Any] = {}
    for name, fields in packed.items():
        if not isinstance(fields, dict):
            raise ValueError(f"entry '{name}' is not a dict")
        entry = {}
        for key, value in fields.items():
            if isinstance(value, dict) and "blob" in value:
                (at, size), dtype = value["blob"], getattr(torch, str(value["dtype"]), None)
                if not isinstance(dtype, torch.dtype) or not 0 <= at <= at + size <= blob.numel():
                    raise ValueError(f"tensor '{name}.{key}' does not fit the blob")
                value = blob[at:at + size].clone().view(dtype).reshape(value["shape"])
            entry[key] = value
        out[name] = entry
    return out


# ============================================================================================ files
@dataclass
class TensorRecord:
    """How one state_dict tensor was stored."""

    name: str
    shape: Tuple[int, ...]
    nonzero: int
    encoding: str
    dense_bytes: int  # the source tensor's bytes
    stored_bytes: int  # bytes of the entry's tensors

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class CompactPlan:
    """A compact file in memory: the dict to save and what each tensor became."""

    contents: Dict[str, Any]
    records: List[TensorRecord] = field(default_factory=list)

    @property
    def payload_bytes(self) -> int:
        return sum(r.stored_bytes for r in self.records)

    @property
    def dense_bytes(self) -> int:
        return sum(r.dense_bytes for r in self.records)


def weight_keys(net: nn.Module) -> List[str]:
    """state_dict keys of every conv/linear weight (the tensors the compact format compresses)."""
    return [f"{name}.weight" if name else "weight" for name, _ in weight_layers(net)]


def plan_compact(loaded: LoadedModel, dtype: str = "float32", per_channel: bool = False) -> CompactPlan:
    """Encode ``loaded`` (masks baked) in the compact format, in memory."""
    if dtype not in VALUE_DTYPES:
        raise UserError(f"unknown --dtype '{dtype}' (use {', '.join(VALUE_DTYPES)})")
    if per_channel and dtype != "int8":
        raise UserError("--per-channel applies to --dtype int8 only")
    spec = loaded.spec
    if spec.arch == "pickled-module":
        raise UserError("a pickled module cannot be exported: rccsnn rebuilds models from their architecture; "
                        "save it as a state_dict and pass --model package.module:factory")
    compressible = set(weight_keys(loaded.net))
    # the weights of quantized layers are stored at their bits, whatever ``dtype`` says (see the module docstring)
    layer_bits = {(f"{name}.weight" if name else "weight"): b for name, b in spec.bits.items()}
    tensors: Dict[str, Dict[str, Any]] = {}
    records: List[TensorRecord] = []
    for key, value in loaded.net.state_dict().items():
        t = value.detach().cpu()
        if key in compressible and t.is_floating_point() and t.dim() >= 2:
            entry = encode_weight(t, dtype, per_channel, bits=layer_bits.get(key))
        else:
            entry = {"encoding": "raw", "value": t.clone()}
        tensors[key] = entry
        records.append(TensorRecord(key, tuple(t.shape), int(torch.count_nonzero(t)), entry["encoding"],
                                    t.numel() * t.element_size(), entry_nbytes(entry)))
    fields = checkpoint_dict(spec, {}, metrics=loaded.metrics, recipe=loaded.recipe, compression=loaded.compression)
    contents: Dict[str, Any] = {
        "format": COMPACT_FORMAT,  # first key: is_compact_file reads it without loading the file
        "format_version": COMPACT_VERSION,
        "rccsnn_version": fields["rccsnn_version"],
        "checkpoint_format_version": fields["format_version"],
    }
    contents.update((key, value) for key, value in fields.items() if key not in _CHECKPOINT_ONLY)
    contents["export"] = {"dtype": dtype, "per_channel": per_channel, "accuracy": None}
    contents["tensors"] = tensors
    contents["checksum"] = tensor_digest(tensors)
    return CompactPlan(contents, records)


def _to_loaded(raw: Dict[str, Any], source: str, model: Optional[str]) -> LoadedModel:
    """Decode a compact dict (already read) into a network, through the checkpoint loader."""
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > COMPACT_VERSION:
        raise UserError(f"{source}: compact format version {version} is newer than this rccsnn reads "
                        f"({COMPACT_VERSION})")
    tensors = raw.get("tensors")
    if not isinstance(tensors, dict):
        raise UserError(f"{source}: corrupt compact file: no tensors")
    if raw.get("checksum") != tensor_digest(tensors):
        raise UserError(f"{source}: corrupt compact file: checksum mismatch (the tensors were altered or damaged)")
    state = {}
    for name, entry in tensors.items():
        try:
            state[name] = decode_entry(entry)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise UserError(f"{source}: corrupt compact file: tensor '{name}': {exc}") from None
    ckpt = {k: v for k, v in raw.items() if k not in _COMPACT_ONLY}
    ckpt.update({"format": FORMAT, "format_version": raw.get("checkpoint_format_version"), "state_dict": state})
    return from_checkpoint(ckpt, Path(source), model)


def is_compact_file(path: str | Path) -> bool:
    """Whether ``path`` is a compact file, judged from the first two strings of its pickle, never unpickled.

    Anything unreadable answers False, so the checkpoint loader reports the problem.
    """
    try:
        path = Path(path)
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pickles:
                return False
            strings: List[str] = []
            with archive.open(pickles[0]) as fh:
                for opcode, arg, _pos in pickletools.genops(fh):
                    if isinstance(arg, str) and "UNICODE" in opcode.name:
                        strings.append(arg)
                        if len(strings) == 2:
                            break
            return strings == ["format", COMPACT_FORMAT]
    except Exception:  # a damaged archive is the checkpoint loader's to report
        return False


def read_compact(path: str | Path) -> Dict[str, Any]:
    """The raw dict of a compact file (``weights_only=True``); one-line :class:`UserError` if unreadable."""
    path = Path(path)
    raw = read_raw(path, trust=False)
    if not isinstance(raw, dict) or raw.get("format") != COMPACT_FORMAT:
        raise UserError(f"{path} is not an rccsnn compact file")
    if "blob" in raw:  # version 2: every tensor in one buffer, deflated
        try:
            blob = raw.pop("blob")
            if "blob_bytes" in raw:  # deflated (the first version 2 files, from one development commit, were not)
                blob = inflate(blob, raw.pop("blob_bytes"))
            raw["tensors"] = unpack_blob(raw.get("tensors") or {}, blob)
        except (ValueError, TypeError, RuntimeError, KeyError, OverflowError) as exc:
            raise UserError(f"{path}: corrupt compact file: {exc}") from None
    return raw


def load_compact(path: str | Path, model: Optional[str] = None) -> LoadedModel:
    """Load a compact file as a network in eval mode (float32 files reproduce the baked model exactly)."""
    return _to_loaded(read_compact(path), str(path), model)


def compact_tensor_bytes(path: str | Path) -> Dict[str, int]:
    """Stored bytes of every state_dict tensor of a compact file (values + index + scale, or the raw tensor)."""
    tensors = read_compact(path).get("tensors") or {}
    return {name: entry_nbytes(entry) for name, entry in tensors.items() if isinstance(entry, dict)}


def save_compact(plan: CompactPlan, path: str | Path, *, overwrite: bool = False) -> None:
    """Write the plan through a temporary file and a rename; an unwritable path is a :class:`UserError`, and so is
    an existing one unless ``overwrite`` (:func:`rccsnn.rundir.publish`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.export.tmp")  # one per process: two exports never share it
    contents = dict(plan.contents)
    contents["tensors"], blob = pack_blob(plan.contents["tensors"])
    contents["blob"], contents["blob_bytes"] = deflate(blob), int(blob.numel())
    try:
        atomic_save(contents, tmp)
        publish(tmp, path, overwrite=overwrite)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def decoded(plan: CompactPlan, model: Optional[str] = None) -> LoadedModel:
    """The network a compact plan stands for, decoded in memory exactly as loading the file would."""
    return _to_loaded(plan.contents, "<compact>", model)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks hold the same state_dict keys and exactly equal tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


__all__ = [
    "COMPACT_FORMAT", "COMPACT_VERSION", "CompactPlan", "IndexCode", "TensorRecord", "compact_tensor_bytes",
    "decode_entry", "decode_mask", "decoded", "delta_decode", "delta_encode", "encode_mask", "encode_weight",
    "entry_nbytes", "is_compact_file", "load_compact", "plan_compact", "read_compact", "same_state", "save_compact",
    "tensor_digest", "weight_keys",
]
