"""What a run shows: TensorBoard scalars and hparams, tqdm progress bars, and the closing console table."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from tqdm.auto import tqdm



class Monitor:
    """TensorBoard writer plus progress bars for one run.

    Args:
        log_dir: where the TensorBoard event files go; ``None`` disables TensorBoard (tests, workers).
        progress: show tqdm bars (on stderr).
    """

    def __init__(self, log_dir: Optional[str | Path], progress: bool = True) -> None:
        self.progress_enabled = progress
        self._writer = None
        if log_dir is not None:
            # Imported lazily: tensorboard takes a second to import and evaluation does not need it.
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log each ``tag -> value`` at ``step``; non-finite values are skipped."""
        if self._writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self._writer.add_scalar(tag, float(value), step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Record the run's settings with its final metrics (TensorBoard's HPARAMS tab)."""
        if self._writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self._writer.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name=".")

    def progress(self, iterable: Iterable, desc: str, total: Optional[int] = None) -> Iterable:
        """A tqdm bar over ``iterable`` (or the iterable itself when progress is off)."""
        return tqdm(iterable, desc=desc, total=total, leave=False, disable=not self.progress_enabled,
                    dynamic_ncols=True, file=sys.stderr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def format_table(header: Sequence[str], rows: List[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns; floats are printed with 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def print_metrics(title: str, metrics: Dict[str, Any]) -> None:
    """Print a two-column table of named metrics."""
    print(title)
    print(format_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))

