"""Event data: tiny N-MNIST, DVS Gesture and SHD sets written here in their real on-disk formats, read through
tonic's own readers by ``load_data``; npz event frames; the time-major collate.

Every fake recording has its own event pattern, so the test finds which recording each loaded sample came from
by comparing its frames with an independent binning of the events written (counts per time bin, pixel and
polarity), and from that checks labels and that the splits do not overlap.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import rccsnn.data
from rccsnn.config import TrainConfig, from_dict
from rccsnn.data import DATASETS, EVENT_DATASETS, DataSplits, load_data, time_major
from rccsnn.data.events import DEFAULT_N_TIME_BINS, FRAME_KEYS
from rccsnn.errors import UserError
from rccsnn.loading import DataSource

tonic = pytest.importorskip("tonic")  # in the test extra (setup.cfg), so CI runs these rather than skipping

BINS = 5


@dataclass
class Recording:
    """Events as written: ``x``, ``y`` pixel (``y`` 0 for a 1-D sensor), polarity ``p``, time ``t_us`` (µs)."""

    x: np.ndarray
    y: np.ndarray
    p: np.ndarray
    t_us: np.ndarray
    label: int


@dataclass
class FakeSet:
    train: List[Recording] = field(default_factory=list)
    test: List[Recording] = field(default_factory=list)
    step_shape: Tuple[int, ...] = ()
    num_classes: int = 0


def _recording(rng: np.random.Generator, label: int, width: int, height: int, polarities: int,
               duration_us: int, tick_us: int = 1, n: int = 60) -> Recording:
    t = np.sort(rng.integers(0, duration_us // tick_us, size=n)) * tick_us
    t[0], t[-1] = 0, duration_us  # a fixed span, so every bin is (duration // T) long
    return Recording(x=rng.integers(0, width, n), y=rng.integers(0, height, n), p=rng.integers(0, polarities, n),
                     t_us=t, label=label)


def reference_frames(rec: Recording, bins: int, step_shape: Tuple[int, ...]) -> np.ndarray:
    """Counts per (time bin, polarity, y, x): bin k holds t in [t0 + k*w, t0 + (k+1)*w), w = (t_end - t0) // bins.

    The last events (t_end) fall just past the last bin; tonic's n_time_bins slicing leaves them out as well.
    """
    t0 = rec.t_us.min()
    width = (rec.t_us.max() - t0) // bins
    index = (rec.t_us - t0) // width
    keep = index < bins
    if len(step_shape) == 1:  # a 1-D sensor (SHD): one polarity, channels along x
        frames = np.zeros((bins, step_shape[0]), np.float32)
        np.add.at(frames, (index[keep], rec.x[keep]), 1)
    else:
        frames = np.zeros((bins, *step_shape), np.float32)
        np.add.at(frames, (index[keep], rec.p[keep], rec.y[keep], rec.x[keep]), 1)
    return frames


# ----------------------------------------------------------------------------------------- real-format writers
def _nmnist_bytes(rec: Recording) -> bytes:
    """N-MNIST .bin: 5 bytes per event - x, y, [polarity bit 7 | t bits 22..16], t bits 15..8, t bits 7..0."""
    t = rec.t_us.astype(np.int64)
    assert t.max() < 2 ** 23  # no timestamp-overflow events (y == 240) needed
    words = np.stack([rec.x, rec.y, (rec.p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF], axis=1)
    return words.astype(np.uint8).tobytes()


def _nmnist(root: Path) -> FakeSet:
    rng = np.random.default_rng(1)
    fake = FakeSet(step_shape=(2, 34, 34), num_classes=10)
    for folder, recordings, count in (("Train", fake.train, 20), ("Test", fake.test, 6)):
        for i in range(count):
            rec = _recording(rng, label=i % 10, width=34, height=34, polarities=2, duration_us=300_000)
            path = root / "NMNIST" / folder / str(rec.label) / f"{i:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_nmnist_bytes(rec))
            recordings.append(rec)
    return fake


def _dvsgesture(root: Path) -> FakeSet:
    """``ibmGesture{Train,Test}/user<NN>_<lighting>/<label>.npy``: ``[N, 4]`` columns x, y, p, t in ms."""
    rng = np.random.default_rng(2)
    fake = FakeSet(step_shape=(2, 128, 128), num_classes=11)
    for folder, recordings, users in (("ibmGestureTrain", fake.train, (1, 2)), ("ibmGestureTest", fake.test, (3,))):
        for user in users:
            for label in range(11):
                rec = _recording(rng, label, width=128, height=128, polarities=2, duration_us=6_000_000,
                                 tick_us=1000)
                path = root / "DVSGesture" / folder / f"user{user:02d}_fluorescent" / f"{label}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, np.stack([rec.x, rec.y, rec.p, rec.t_us // 1000], axis=1).astype(np.int64))
                recordings.append(rec)
    return fake


def _shd(root: Path) -> FakeSet:
    """``SHD/shd_{train,test}.h5``: ragged ``spikes/times`` (s) and ``spikes/units``, ``labels``, ``extra/*``."""
    import h5py

    rng = np.random.default_rng(3)
    fake = FakeSet(step_shape=(700,), num_classes=20)
    (root / "SHD").mkdir(parents=True)
    for filename, recordings, count in (("shd_train.h5", fake.train, 20), ("shd_test.h5", fake.test, 5)):
        times, units = [], []
        for i in range(count):
            # times in 1/1024 s, exact in float32; tonic reads them as int(seconds * 1e6) µs
            ticks = np.sort(rng.integers(0, 1024, size=50))
            ticks[0], ticks[-1] = 0, 1023
            seconds = (ticks / 1024).astype(np.float32)
            rec = Recording(x=rng.integers(0, 700, 50), y=np.zeros(50, np.int64), p=np.zeros(50, np.int64),
                            t_us=np.floor(seconds.astype(np.float64) * 1e6).astype(np.int64), label=i % 20)
            times.append(seconds)
            units.append(rec.x.astype(np.uint16))
            recordings.append(rec)
        with h5py.File(root / "SHD" / filename, "w") as f:
            for key, rows, dtype in (("spikes/times", times, np.float32), ("spikes/units", units, np.uint16)):
                ragged = f.create_dataset(key, (count,), dtype=h5py.vlen_dtype(dtype))
                for i, row in enumerate(rows):
                    ragged[i] = row
            f.create_dataset("labels", data=np.array([r.label for r in recordings], np.uint16))
            f.create_dataset("extra/keys", data=np.array([f"word{k}".encode() for k in range(20)]))
            f.create_dataset("extra/speaker", data=np.zeros(count, np.uint16))
    return fake


#: one fake-file builder per registered event set; a newly registered event set must add one here.
EVENT_BUILDERS: Dict[str, Callable[[Path], FakeSet]] = {"nmnist": _nmnist, "dvsgesture": _dvsgesture, "shd": _shd}

TONIC_CLASS = {"nmnist": "NMNIST", "dvsgesture": "DVSGesture", "shd": "SHD"}


def test_builders_cover_the_event_sets():
    assert sorted(EVENT_BUILDERS) == sorted(EVENT_DATASETS)
    assert set(EVENT_DATASETS) <= set(DATASETS.names())


def _whole(dataset, splits: DataSplits) -> Tuple[torch.Tensor, torch.Tensor]:
    return next(iter(DataLoader(dataset, batch_size=len(dataset), collate_fn=splits.collate)))


def _which(sample: torch.Tensor, expected: List[np.ndarray]) -> int:
    """Index of the recording whose reference frames equal ``sample`` exactly."""
    matches = [i for i, frames in enumerate(expected) if np.array_equal(sample.numpy(), frames)]
    assert len(matches) == 1, f"sample matches {len(matches)} written recordings"
    return matches[0]


@pytest.mark.parametrize("name", EVENT_DATASETS)
def test_event_set_reads_real_format_and_bins_exactly(name, tmp_path):
    fake = EVENT_BUILDERS[name](tmp_path)
    splits = load_data(name, root=str(tmp_path), frames={"n_time_bins": BINS})

    assert (splits.name, splits.steps, splits.input_shape) == (name, BINS, fake.step_shape)
    assert splits.num_classes == fake.num_classes and splits.collate is time_major
    assert len(splits.train) + len(splits.val) == len(fake.train) and len(splits.test) == len(fake.test)
    assert len(splits.val) == round(0.1 * len(fake.train)) > 0

    seen: Dict[str, List[int]] = {}
    for split, written in (("train", fake.train), ("val", fake.train), ("test", fake.test)):
        expected = [reference_frames(rec, BINS, fake.step_shape) for rec in written]
        x, y = _whole(splits.split(split), splits)
        assert x.dtype == torch.float32 and tuple(x.shape) == (BINS, len(y), *fake.step_shape)  # time-major
        assert y.dtype == torch.int64
        seen[split] = [_which(x[:, b], expected) for b in range(len(y))]
        assert y.tolist() == [written[i].label for i in seen[split]]
        assert float(x.sum()) > 0
    assert not set(seen["train"]) & set(seen["val"])
    assert sorted(seen["train"] + seen["val"]) == list(range(len(fake.train)))
    assert sorted(seen["test"]) == list(range(len(fake.test)))


@pytest.mark.parametrize("name", EVENT_DATASETS)
def test_frames_are_binned_once_then_read_from_the_cache(name, tmp_path, monkeypatch):
    EVENT_BUILDERS[name](tmp_path)
    first = load_data(name, root=str(tmp_path), frames={"n_time_bins": BINS})
    before = {split: _whole(first.split(split), first) for split in ("train", "val", "test")}
    cached = sorted((tmp_path / TONIC_CLASS[name] / "frames" / f"n_time_bins={BINS}").glob("*/*.npz"))
    assert len(cached) == len(first.train) + len(first.val) + len(first.test)

    def no_reading(self, index):
        raise AssertionError("read the recording again although its frames are cached")

    monkeypatch.setattr(getattr(tonic.datasets, TONIC_CLASS[name]), "__getitem__", no_reading)
    second = load_data(name, root=str(tmp_path), frames={"n_time_bins": BINS})
    for split, (x, y) in before.items():
        x2, y2 = _whole(second.split(split), second)
        assert torch.equal(x, x2) and torch.equal(y, y2)

    other = load_data(name, root=str(tmp_path), frames={"n_time_bins": BINS + 1})  # other settings: bin again
    with pytest.raises(AssertionError, match="read the recording again"):
        other.test[0]


def test_default_bins_and_event_bins_pass_through(tmp_path):
    _nmnist(tmp_path)
    assert load_data("nmnist", root=str(tmp_path)).steps == DEFAULT_N_TIME_BINS == 16
    assert load_data("nmnist", root=str(tmp_path)).test[0][0].shape == (16, 2, 34, 34)
    splits = load_data("nmnist", root=str(tmp_path), frames={"n_event_bins": 3, "overlap": 0.5})
    x, _ = splits.test[0]
    expected = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_event_bins=3, overlap=0.5)(
        _tonic_test_events(tmp_path))
    assert splits.steps == 3 and torch.equal(x, torch.from_numpy(expected.astype(np.float32)))


def _tonic_test_events(root: Path) -> np.ndarray:
    """Events of N-MNIST test recording 0, as tonic's reader gives them."""
    first = sorted((root / "NMNIST" / "Test").glob("*/*.bin"))[0]
    return tonic.io.read_mnist_file(str(first), dtype=tonic.datasets.NMNIST.dtype)


FRAME_ERRORS = {
    "unknown key": ({"n_time_bin": 4}, "unknown key 'n_time_bin'"),
    "variable-length slicing": ({"time_window": 1000.0}, "valid keys: " + ", ".join(FRAME_KEYS)),
    "both bin counts": ({"n_time_bins": 4, "n_event_bins": 4}, "not both"),
    "zero bins": ({"n_time_bins": 0}, "n_time_bins must be a whole number >= 1"),
    "fractional bins": ({"n_event_bins": 2.5}, "n_event_bins must be a whole number >= 1"),
    "overlap of a whole bin": ({"overlap": 1.0}, "overlap must be a fraction"),
}


@pytest.mark.parametrize("case", sorted(FRAME_ERRORS))
def test_bad_frame_settings_are_one_line_user_errors(case, tmp_path):
    frames, expected = FRAME_ERRORS[case]
    with pytest.raises(UserError) as info:
        load_data("nmnist", root=str(tmp_path), frames=frames)  # checked before any file is looked for
    assert "\n" not in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize("name", EVENT_DATASETS)
def test_missing_event_set_names_the_path_and_download(name, tmp_path):
    with pytest.raises(UserError) as info:
        load_data(name, root=str(tmp_path / "empty"))
    message = str(info.value)
    assert "\n" not in message and "--download" in message
    assert str(tmp_path / "empty" / TONIC_CLASS[name]) in message


def test_event_set_without_tonic_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tonic", None)  # import tonic now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "rccsnn.data.tonic_sets", raising=False)
    monkeypatch.delattr(rccsnn.data, "tonic_sets", raising=False)
    with pytest.raises(UserError) as info:
        load_data("shd", root=str(tmp_path))
    assert "\n" not in str(info.value) and 'pip install -e ".[events]"' in str(info.value)


@pytest.mark.slow
def test_importing_rccsnn_does_not_import_tonic():
    code = "import sys, rccsnn, rccsnn.data, rccsnn.cli; print('tonic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n not in EVENT_DATASETS and n != "npz"])
def test_static_set_rejects_frames(name, tmp_path):
    with pytest.raises(UserError) as info:
        load_data(name, root=str(tmp_path), frames={"n_time_bins": 4})
    assert str(info.value) == (f"data set '{name}' is not event data; "
                               f"data.frames applies to nmnist, dvsgesture, shd")


def test_static_set_takes_empty_frames():
    assert load_data("digits", frames={}).steps is None and load_data("digits").collate is None


def test_frames_reach_the_loader_from_a_recipe_and_a_data_source(tmp_path):
    from rccsnn.training import data_and_spec

    _shd(tmp_path)
    cfg = from_dict(TrainConfig, {"data": {"name": "shd", "root": str(tmp_path), "frames": {"n_time_bins": 3}}})
    assert data_and_spec(cfg)[0].steps == 3
    source = DataSource(name="shd", root=str(tmp_path), frames=DataSource.frames_of({"n_time_bins": 7}))
    hash(source)
    assert source.load().steps == 7


# ---------------------------------------------------------------------------------------------- npz event files
def _save(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "events.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_five_dimensional_x_is_event_data_kept_as_counts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, size=(40, 6, 2, 5, 5)).astype(np.uint8)
    x_val = rng.integers(0, 9, size=(4, 6, 2, 5, 5)).astype(np.uint8)
    splits = load_data("npz", path=_save(tmp_path, x=x, y=np.arange(40) % 3, x_val=x_val, y_val=np.arange(4) % 3))
    assert (splits.steps, splits.input_shape, splits.num_classes) == (6, (2, 5, 5), 3)
    assert torch.equal(splits.val[1][0], torch.from_numpy(x_val[1].astype(np.float32)))  # not divided by 255
    xb, yb = next(iter(DataLoader(splits.train, batch_size=8, collate_fn=splits.collate)))
    assert xb.shape == (6, 8, 2, 5, 5) and yb.shape == (8,)
    assert len(splits.train) + len(splits.test) == 40 and splits.extra["events"] is True


@pytest.mark.parametrize("x_shape, step_shape", [((30, 4, 7), (7,)), ((30, 4, 5, 6), (1, 5, 6)),
                                                 ((30, 4, 2, 5, 6), (2, 5, 6))])
def test_npz_events_flag_marks_time_major_x(x_shape, step_shape, tmp_path):
    x = np.random.default_rng(0).random(x_shape).astype(np.float32) * 3
    splits = load_data("npz", path=_save(tmp_path, x=x, y=np.arange(30) % 2, events=True))
    assert (splits.steps, splits.input_shape) == (4, step_shape)
    sample, _ = splits.train[0]
    assert sample.shape == (4, *step_shape) and float(sample.max()) <= 3


def test_npz_events_false_keeps_static_images(tmp_path):
    splits = load_data("npz", path=_save(tmp_path, x=np.zeros((30, 4, 5, 6), np.uint8), y=np.arange(30) % 2,
                                         events=False))
    assert splits.steps is None and splits.input_shape == (4, 5, 6)


_EV = np.ones((10, 3, 4), np.float32)
_Y = np.arange(10) % 2
NPZ_EVENT_ERRORS = {
    "negative counts": (dict(x=-_EV, y=_Y, events=True), "negative"),
    "nan": (dict(x=_EV * np.nan, y=_Y, events=True), "NaN"),
    "6-D with flag": (dict(x=np.ones((10, 3, 1, 1, 2, 2)), y=_Y, events=True), "[N, T, C, H, W]"),
    "flag not a scalar": (dict(x=_EV, y=_Y, events=np.array([True, True])), "'events' must be a single bool"),
    "val steps differ": (dict(x=_EV, y=_Y, events=True, x_val=np.ones((3, 2, 4), np.float32), y_val=_Y[:3]),
                         "'x_val'"),
}


@pytest.mark.parametrize("case", sorted(NPZ_EVENT_ERRORS))
def test_npz_event_problem_is_one_line_user_error_naming_file_and_shape(case, tmp_path):
    arrays, expected = NPZ_EVENT_ERRORS[case]
    path = _save(tmp_path, **arrays)
    with pytest.raises(UserError) as info:
        load_data("npz", path=path)
    message = str(info.value)
    assert "\n" not in message and expected in message and path in message
    if case != "flag not a scalar":
        assert "[" in message  # the shape


def test_npz_rejects_frames(tmp_path):
    with pytest.raises(UserError, match="data.frames applies to nmnist, dvsgesture, shd"):
        load_data("npz", path=_save(tmp_path, x=_EV, y=_Y, events=True), frames={"n_time_bins": 2})


# ------------------------------------------------------------------------------------------------ the collate
def test_time_major_collate_puts_time_first():
    batch = [(torch.full((4, 2, 5), float(b)), b) for b in range(3)]
    x, y = time_major(batch)
    assert x.shape == (4, 3, 2, 5) and x.is_contiguous() and y.tolist() == [0, 1, 2] and y.dtype == torch.int64
    assert all(torch.equal(x[t, b], torch.full((2, 5), float(b))) for t in range(4) for b in range(3))
