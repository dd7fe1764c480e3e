"""Multi-process runs under torchrun: 2 CPU processes with gloo on a tiny digits model (about 40 s in all; these
start subprocesses and are marked slow, the in-process checks of the launch below are fast).

The data set is an npz of the 8x8 digits with 1,024 training samples, so the global batch of 64 (32 per process)
divides every epoch and no sample is repeated as padding: one process with batch 64 and two with 32 each see
exactly the same batches. Tolerances (stated in README, "Multi-GPU and multi-node"):

* across processes: everything identical, bit for bit (weights, masks, duals, sparsity levels, rate estimates);
* against one process with the same global batch and seed: the same masks and method events, duals and sparsity
  levels within 1e-6 (relative), weights within 1e-4 (absolute). Only float rounding differs: gradients and
  BatchNorm statistics are sums over two half-batches instead of one batch.

``tests/dist_launch.py`` runs the CLI with test-only hooks: every process dumps its final state, or one process
dies with ``os._exit(1)`` in the middle of training.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from helpers import assert_user_error, cli, train_tiny
from rccsnn import batchnorm, distributed
from rccsnn.errors import UserError
from rccsnn.trainer import ShardedShuffle

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

TESTS_DIR = Path(__file__).resolve().parent
LAUNCHER = TESTS_DIR / "dist_launch.py"
TIMEOUT_S = 300  # generous: the machine may be busy; each launch takes about 10 s when it is not
WEIGHT_ATOL = 1e-4
DUAL_RTOL = 1e-6

RECIPE = """\
data: {{name: npz, path: {npz}, batch_size: 64}}
model: {{arch: convsnn, args: {{channels: [4, 8], hidden: 16}}, T: 2}}
optim: {{lr: 0.02, epochs: {epochs}}}
seed: 0
"""


def env(**extra) -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if key not in extra:
            out.pop(key, None)
    return out


def torchrun(*args, log_dir: Optional[Path] = None, options=(), **extra) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 [OPTIONS] ARGS`` (``-m rccsnn`` or the test launcher)."""
    logs = ["--log-dir", str(log_dir), "-r", "3"] if log_dir is not None else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *logs, *options,
           *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env(**extra))


def single(*args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCHER), *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env(**extra))


def rccsnn_lines(text: str):
    """rccsnn's own messages (``rccsnn COMMAND: ...``), not torchrun's report (``rccsnn FAILED``)."""
    return [line for line in text.splitlines() if re.match(r"rccsnn \w+: ", line)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(root, npz path, a model trained on it for one epoch in this process)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("dist")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(y))
    train, val, test = idx[:1024], idx[1024:1225], idx[1225:1481]  # 201: shards of 101 and 100
    npz = root / "digits.npz"
    np.savez(npz, x=x[train], y=y[train], x_val=x[val], y_val=y[val], x_test=x[test], y_test=y[test])
    (root / "recipe.yaml").write_text(RECIPE.format(npz=npz, epochs=1))
    ckpt = train_tiny(root, RECIPE.format(npz=npz, epochs=1), run="pretrained")
    return root, npz, ckpt


def compress_args(tiny, out):
    root, npz, ckpt = tiny
    return ["compress", ckpt, "--data", "npz", "--data-path", npz, "--constraint", "params=0.4",
            "--constraint", "synops=0.3", "--epochs", 3, "--no-progress", "--device", "cpu", "--out", out]


@pytest.fixture(scope="module")
def two_processes(tiny):
    """A 2-process compression (params and synops budgets: the rate estimates are exercised): (out, dumps, logs)."""
    root = tiny[0]
    out, dumps, logs = root / "ddp", root / "ddp-dump", root / "ddp-logs"
    result = torchrun(LAUNCHER, *compress_args(tiny, out), log_dir=logs, RCCSNN_TEST_DUMP=str(dumps))
    assert result.returncode == 0, result.stderr[-4000:]
    return out, dumps, logs


def load_dump(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    assert a["net"].keys() == b["net"].keys()
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    ea, eb = a["method"]["engine"], b["method"]["engine"]
    assert torch.equal(ea["s"], eb["s"]) and torch.equal(ea["z"], eb["z"]) and ea["y"] == eb["y"]
    assert torch.equal(a["method"]["rates"], b["method"]["rates"])
    assert a["method"]["events"] == b["method"]["events"] and a["method"]["phase"] == b["method"]["phase"]


def masks(state: dict) -> dict:
    return {k: v for k, v in state["net"].items() if k.endswith(".mask")}


def assert_matches_one_process(one: dict, rank0: dict, one_run: Path, ddp_run: Path) -> None:
    """A one-process run against process 0 of a two-process one, within the tolerances of the module docstring; and
    their written results: the same resources on the validation split (counted on the same masks)."""
    assert one["world_size"] == 1 and one["step"] == rank0["step"]
    for key, mask in masks(one).items():
        assert torch.equal(mask, rank0["net"][key]), key
    assert one["method"]["events"] == rank0["method"]["events"]
    for key, value in one["net"].items():
        if value.is_floating_point():
            assert torch.allclose(value, rank0["net"][key], rtol=0, atol=WEIGHT_ATOL), key
    e1, e2 = one["method"]["engine"], rank0["method"]["engine"]
    assert torch.allclose(e1["s"], e2["s"], rtol=DUAL_RTOL, atol=1e-12)
    assert torch.allclose(e1["z"], e2["z"], rtol=DUAL_RTOL, atol=1e-12)
    assert e1["y"] == pytest.approx(e2["y"], rel=DUAL_RTOL)
    assert torch.allclose(one["method"]["rates"], rank0["method"]["rates"], rtol=DUAL_RTOL, atol=1e-12)
    s1 = json.loads((one_run / "summary.json").read_text())
    s2 = json.loads((ddp_run / "summary.json").read_text())
    for name in ("params", "synops"):
        assert s2["resources"][name]["ratio"] == pytest.approx(s1["resources"][name]["ratio"], rel=1e-9)
        assert s2["resources"][name]["ratio"] <= s2["budgets"][name]


@pytest.mark.slow
def test_processes_agree_exactly_and_match_one_process(tiny, two_processes):
    out, dumps, _ = two_processes
    rank0, rank1 = load_dump(dumps / "rank0.pt"), load_dump(dumps / "rank1.pt")
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert_identical(rank0, rank1)

    alone = single(*compress_args(tiny, tiny[0] / "single"), RCCSNN_TEST_DUMP=str(tiny[0] / "single-dump"))
    assert alone.returncode == 0, alone.stderr[-4000:]
    one = load_dump(tiny[0] / "single-dump" / "rank0.pt")
    assert len(masks(one)) == 3
    assert_matches_one_process(one, rank0, tiny[0] / "single", out)


@pytest.mark.slow
def test_only_process_0_writes_and_prints(two_processes):
    out, _, logs = two_processes
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("events")) == \
        ["config.yaml", "model.pt", "state.pt", "summary.json"]
    writers = {re.search(r"\.(\d+)\.\d+$", p.name).group(1) for p in out.glob("events.out.tfevents.*")}  # pids
    assert len(writers) == 1
    (out0,) = logs.rglob("0/stdout.log")
    (out1,) = logs.rglob("1/stdout.log")
    (err1,) = logs.rglob("1/stderr.log")
    assert "compressed model:" in out0.read_text() and "epoch 3/3" in out0.read_text()
    assert out1.read_text() == "" and err1.read_text() == ""


@pytest.mark.slow
def test_dead_process_stops_the_run_and_resume_continues_it(tiny, two_processes):
    root = tiny[0]
    out = root / "dies"
    # Process 1 dies at step 20 (16 steps per epoch): epoch 1 is saved, epoch 2 is lost. The collective timeout is
    # set far beyond TIMEOUT_S: a survivor that waited for it would hang this call until it fails, so finishing at
    # all shows that torchrun stopped the survivor (or its collective failed at once).
    result = torchrun(LAUNCHER, *compress_args(tiny, out), RCCSNN_TEST_DIE="1:20", RCCSNN_DIST_TIMEOUT="86400")
    assert result.returncode != 0
    lines = rccsnn_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-4000:]
    assert ("lost contact with another process" in lines[0] and "the run is aborted" in lines[0]) or \
        "stopped by torchrun" in lines[0], lines[0]
    assert "--resume" in lines[0]
    assert result.stderr.count("Traceback") <= 1  # torchrun's own, around its report; none from rccsnn
    assert "exitcode  : 1" in result.stderr  # torchrun's report names the process that died
    assert (out / "state.pt").is_file() and not (out / "summary.json").exists()

    dumps = root / "dies-dump"
    resumed = torchrun(LAUNCHER, *compress_args(tiny, out), "--resume", RCCSNN_TEST_DUMP=str(dumps))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # Exactly the uninterrupted 2-process run: state.pt carried every process's random stream.
    assert_identical(load_dump(dumps / "rank0.pt"), load_dump(two_processes[1] / "rank0.pt"))
    assert_identical(load_dump(dumps / "rank1.pt"), load_dump(two_processes[1] / "rank0.pt"))


@pytest.mark.slow
def test_a_single_step_snntorch_model_matches_one_process(tiny):
    """A model written as snntorch's tutorials write it (single-step ``nn.Sequential``, ``init_hidden=True``
    neurons): under DDP its forward runs once per time step before one backward, and its neurons keep state between
    those calls. Two processes must still agree bit for bit, and with one process within the tolerances above."""
    root, npz, _ = tiny
    torch.manual_seed(0)
    import snntorch_models

    state = root / "csnn.pt"
    torch.save(snntorch_models.csnn().state_dict(), state)

    def args(out):
        return ["compress", state, "--model", "snntorch_models:csnn", "--T", 2, "--data", "npz", "--data-path", npz,
                "--constraint", "params=0.3", "--constraint", "synops=0.3", "--epochs", 2, "--no-progress",
                "--device", "cpu", "--out", out]

    ddp = torchrun(LAUNCHER, *args(root / "csnn-ddp"), RCCSNN_TEST_DUMP=str(root / "csnn-ddp-dump"))
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    alone = single(*args(root / "csnn-one"), RCCSNN_TEST_DUMP=str(root / "csnn-one-dump"))
    assert alone.returncode == 0, alone.stderr[-4000:]
    rank0, rank1 = load_dump(root / "csnn-ddp-dump" / "rank0.pt"), load_dump(root / "csnn-ddp-dump" / "rank1.pt")
    assert_identical(rank0, rank1)
    one = load_dump(root / "csnn-one-dump" / "rank0.pt")
    assert len(masks(one)) == 2
    assert_matches_one_process(one, rank0, root / "csnn-one", root / "csnn-ddp")
    raw = torch.load(root / "csnn-ddp" / "model.pt", weights_only=True)
    assert raw["steps"] == "single"
    snntorch_models.csnn().load_state_dict(raw["state_dict"], strict=True)


@pytest.mark.slow
def test_train_two_processes_matches_one(tiny):
    root, npz, single_ckpt = tiny
    result = torchrun("-m", "rccsnn", "train", root / "recipe.yaml", "--out", root / "train-ddp", "--no-progress",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("epoch 1/1") == 1  # one process prints
    a = torch.load(single_ckpt, weights_only=True)["state_dict"]
    b = torch.load(root / "train-ddp" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=0, atol=WEIGHT_ATOL), key
        else:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_batch_that_does_not_split_is_one_line(tiny):
    out = tiny[0] / "never"
    result = torchrun("-m", "rccsnn", *compress_args(tiny, out)[:-2], "--set", "data.batch_size=63", "--out", out)
    assert result.returncode != 0
    lines = rccsnn_lines(result.stderr)
    assert lines == ["rccsnn compress: error: data.batch_size 63 is the global batch and must be divisible by the "
                     "2 processes of this run (each takes batch_size / 2); use 62 or 64"], result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr and not out.exists()


# ---------------------------------------------------------------------------------------------- in one process
def torchrun_env(monkeypatch, rank=0, world=2, local_world=None):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world or world))


def test_launch_is_read_from_torchruns_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launch_from_env() is None
    torchrun_env(monkeypatch, world=1)
    assert distributed.launch_from_env() is None  # one process needs no process group
    torchrun_env(monkeypatch, rank=1, world=4, local_world=2)
    launch = distributed.launch_from_env()
    assert (launch.rank, launch.world_size, launch.local_world_size, launch.single_node) == (1, 4, 2, False)


def test_user_errors_under_torchrun_are_one_line(monkeypatch, tiny, tmp_path):
    torchrun_env(monkeypatch)
    root, npz, ckpt = tiny
    assert_user_error(*cli("evaluate", ckpt), "rccsnn evaluate runs in one process; only train and compress run "
                                              "under torchrun (it started 2)")
    code, out, err = cli("compress", ckpt, "--budget", "0.5", "--set", "data.batch_size=7", "--out", tmp_path / "x")
    assert_user_error(code, out, err, "data.batch_size 7 is the global batch and must be divisible by the 2 "
                                      "processes", "use 6 or 8")
    monkeypatch.setenv("RCCSNN_DIST_TIMEOUT", "soon")
    assert_user_error(*cli("train", root / "recipe.yaml", "--out", tmp_path / "y", "--device", "cpu"),
                      "RCCSNN_DIST_TIMEOUT must be a positive number of seconds, got 'soon'")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_gpu_placement_errors(monkeypatch):
    torchrun_env(monkeypatch, rank=0, world=2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="pins a GPU, but under torchrun every process takes its own"):
        distributed.start(torch.device("cuda", 1))
    with pytest.raises(UserError, match="torchrun started 2 processes on this node, but it has only 1 "
                                                    "CUDA GPU; use --nproc_per_node=1 or fewer, or --device cpu"):
        distributed.start(torch.device("cuda"))


def test_a_split_smaller_than_the_processes(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert list(distributed.shard(list(range(10)))) == [1, 5, 9]
    with pytest.raises(UserError, match="a split of 3 samples cannot be shared by 4 processes"):
        distributed.shard([0, 1, 2])


@pytest.mark.parametrize("size,batch,world", [(100, 8, 1), (100, 8, 2), (103, 8, 2), (103, 6, 3), (5, 4, 4)])
def test_processes_together_take_the_single_process_batches(size, batch, world):
    order = ShardedShuffle(size, seed=3, world_size=1)
    order.set_epoch(2)
    alone = list(order)
    shards = []
    for r in range(world):
        s = ShardedShuffle(size, seed=3, rank=r, world_size=world)
        s.set_epoch(2)
        shards.append(list(s))
    assert len({len(s) for s in shards}) == 1  # the same number of samples, hence steps, on every process
    per = batch // world if batch % world == 0 else 1
    steps = -(-len(shards[0]) // per)
    assert steps == -(-size // (per * world))  # as many steps as one process with the global batch
    for i in range(steps):
        together = sorted(x for s in shards for x in s[i * per:(i + 1) * per])
        expected = alone[i * per * world:(i + 1) * per * world]
        if i < steps - 1:
            assert together == sorted(expected)
        else:  # the last batch: the single-process one plus the samples repeated as padding
            assert set(expected) <= set(together) and len(together) - len(expected) < world
    assert sorted(set(x for s in shards for x in s)) == list(range(size))


def test_one_process_keeps_the_earlier_data_order():
    """The order is what ``DataLoader(shuffle=True, generator=g)`` gave with g reseeded (seed * 100_003 + epoch)."""
    data = TensorDataset(torch.arange(57))
    gen = torch.Generator()
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=gen)
    for epoch in range(3):
        gen.manual_seed(5 * 100_003 + epoch)
        before = torch.cat([b[0] for b in loader]).tolist()
        sampler = ShardedShuffle(57, seed=5)
        sampler.set_epoch(epoch)
        assert list(sampler) == before


def test_global_batchnorm_is_batchnorm_over_the_whole_batch(monkeypatch):
    """With one process standing in for all (the all-reduce an identity), GlobalBatchNorm is BatchNorm:
    the same output, gradients and running statistics (float rounding apart)."""
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: t)
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3, momentum=0.2)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    ours = batchnorm.sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.2)),
                                      torch.device("cpu"))
    ours[0].load_state_dict(plain.state_dict())
    assert isinstance(ours[0], batchnorm.GlobalBatchNorm)
    x = torch.randn(6, 3, 4, 5) * 3 + 1
    upstream = torch.randn(6, 3, 4, 5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), ours(xb)
    assert torch.allclose(ya, yb, atol=1e-5)
    (ya * upstream).sum().backward()
    (yb * upstream).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    assert torch.allclose(plain.weight.grad, ours[0].weight.grad, atol=1e-4)
    assert torch.allclose(plain.bias.grad, ours[0].bias.grad, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(plain, name).double(), getattr(ours[0], name).double(), atol=1e-6), name
    plain.eval(), ours.eval()
    assert torch.allclose(plain(x), ours(x), atol=1e-6)
