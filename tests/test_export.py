"""``rccsnn export`` and ``rccsnn report``: the compact format's index coder on hand-made masks, exact float32 round
trips, float16/int8 exports that state their accuracy change, report numbers checked by hand, compact files in
``evaluate``, one-line errors for damaged files, and NIR (the round trip needs the optional extra: see the last test).

The tiny model (trained 1 epoch, compressed to 20 % of the weights for 1 epoch): convsnn channels [4, 8], hidden 16
on digits (1x8x8), T = 2::

    features.0.0    Conv2d 1 -> 4, 3x3    36 weights, 8x8 = 64 positions   analog input (not pruned)
    features.3.0    Conv2d 4 -> 8, 3x3   288 weights, 4x4 = 16 positions
    classifier.0.1  Linear 32 -> 16      512 weights, 1 position
    classifier.2.0  Linear 16 -> 10      160 weights, 1 position
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from exact_count import exact_counts
from helpers import assert_user_error, cli, tiny_recipe, train_tiny
from rccsnn.data import load_data
from rccsnn.errors import UserError
from rccsnn.formats.compact import (COMPACT_FORMAT, IndexCode, decode_entry, decode_mask, delta_decode, delta_encode,
                                   encode_mask, encode_weight, entry_nbytes, is_compact_file, load_compact,
                                   read_compact)
from rccsnn.formats.nir import nir_graph
from rccsnn.models.checkpoint import load_checkpoint
from rccsnn.metrics import LAYER_KEYS, REPORT_KEYS, TOTAL_KEYS
from rccsnn.snn import simulate

T = 2
LAYERS = {  # name: (kind, weights, output positions per step)
    "features.0.0": ("Conv2d", 36, 64),
    "features.3.0": ("Conv2d", 288, 16),
    "classifier.0.1": ("Linear", 512, 1),
    "classifier.2.0": ("Linear", 160, 1),
}
RECIPE = tiny_recipe(epochs=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(root, compressed checkpoint, its float32 compact export, the export's stdout)."""
    root = tmp_path_factory.mktemp("export")
    train_tiny(root, RECIPE, run="train")
    code, _, err = cli("compress", root / "train" / "model.pt", "--budget", "0.2", "--epochs", "1", "--out",
                       root / "compress", "--no-progress", "--device", "cpu")
    assert code == 0, err
    ckpt = root / "compress" / "model.pt"
    compact = root / "compact.pt"
    code, out, err = cli("export", ckpt, "--out", compact, "--device", "cpu")
    assert code == 0, err
    return root, ckpt, compact, out


@pytest.fixture(scope="module")
def test_batch():
    x, _ = next(iter(torch.utils.data.DataLoader(load_data("digits").test, batch_size=128)))
    return x


# ------------------------------------------------------------------------------------------------ the index coder
def roundtrip(mask: np.ndarray) -> IndexCode:
    code = encode_mask(mask)
    assert np.array_equal(decode_mask(code, mask.size), np.flatnonzero(mask.reshape(-1)))
    return code


def test_dense_ish_mask_takes_the_bitmask():
    mask = np.random.default_rng(0).random(1000) < 0.5
    code = roundtrip(mask)
    assert code.kind == "bitmask" and code.nbytes == 125  # 1000 bits; ~500 uint8 deltas would be 4x more


def test_very_sparse_mask_takes_deltas():
    mask = np.zeros((100, 100), dtype=bool)
    mask.flat[[3, 10, 200, 300, 310, 320, 330, 931]] = True  # gaps 3, 6, 189, 99, 9, 9, 9, 600
    code = roundtrip(mask)
    # uint8: 8 codes + 600 // 255 = 2 escapes = 10 bytes; uint16: 16 bytes; bitmask: 1250 bytes
    assert code.kind == "delta" and code.data.dtype == np.uint8 and code.nbytes == 10
    assert code.data.tolist() == [3, 6, 189, 99, 9, 9, 9, 255, 255, 90]
    mask.flat[4000] = True  # a gap of 3068 costs uint8 12 escapes: 9 + 14 = 23 bytes; uint16: 18 bytes
    code = roundtrip(mask)
    assert code.kind == "delta" and code.data.dtype == np.uint16 and code.nbytes == 18


def test_delta_escapes_by_hand():
    assert delta_encode(np.array([0, 1, 3]), np.uint8).tolist() == [0, 0, 1]
    assert delta_encode(np.array([255]), np.uint8).tolist() == [255, 0]  # gap 255 = one escape + 0
    assert delta_encode(np.array([254, 765]), np.uint8).tolist() == [254, 255, 255, 0]  # gap 510 = 2 escapes + 0
    assert delta_decode(np.array([254, 255, 255, 0], dtype=np.uint8), 766).tolist() == [254, 765]
    big = np.array([0, 70000, 70001, 2 ** 20])  # gaps beyond uint8 and uint16
    for dtype in (np.uint8, np.uint16, np.uint32):
        codes = delta_encode(big, dtype)
        assert codes.dtype == dtype and delta_decode(codes, 2 ** 20 + 1).tolist() == big.tolist()
    assert delta_encode(big, np.uint32).size == 4 and delta_encode(big, np.uint16).size == 4 + 1 + 14


def test_large_gaps_pick_the_cheapest_width():
    mask = np.zeros(2 ** 20 + 1, dtype=bool)
    mask[[0, 2 ** 20]] = True  # one gap of 2^20 - 1: uint8 4114 codes, uint16 18 x 2, uint32 2 x 4 = 8 bytes
    code = roundtrip(mask)
    assert code.kind == "delta" and code.data.dtype == np.uint32 and code.nbytes == 8


def test_empty_and_all_zero_masks():
    code = roundtrip(np.zeros(0, dtype=bool))
    assert code.nbytes == 0
    code = roundtrip(np.zeros((7, 9), dtype=bool))  # nothing to index: an empty delta list beats 8 bitmask bytes
    assert code.kind == "delta" and code.nbytes == 0
    for shape in [(0, 3), (4, 5)]:
        w = torch.zeros(shape)
        assert torch.equal(decode_entry(encode_weight(w)), w)


def test_decoder_rejects_malformed_codes():
    with pytest.raises(ValueError, match="escape"):
        delta_decode(np.array([3, 255], dtype=np.uint8), 1000)
    with pytest.raises(ValueError, match="beyond"):
        delta_decode(np.array([9], dtype=np.uint8), 9)
    with pytest.raises(ValueError, match="does not fit"):
        decode_mask(IndexCode("bitmask", np.zeros(3, dtype=np.uint8)), 9)
    with pytest.raises(ValueError, match="padding"):
        decode_mask(IndexCode("bitmask", np.array([0, 1], dtype=np.uint8)), 9)
    entry = encode_weight(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    entry["values"] = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="2 values for 1 positions"):
        decode_entry(entry)


def test_weight_entries_pick_the_smaller_layout():
    rng = torch.Generator().manual_seed(0)
    nearly_full = torch.randn(32, 32, generator=rng)  # no zeros: dense (4096 B) beats values + any index
    e = encode_weight(nearly_full)
    assert e["encoding"] == "dense" and entry_nbytes(e) == 4096
    half = nearly_full * (torch.rand(32, 32, generator=rng) < 0.5)
    e = encode_weight(half)
    k = int(torch.count_nonzero(half))
    assert e["encoding"] == "bitmask" and entry_nbytes(e) == 4 * k + 128
    sparse = torch.zeros(64, 64)
    sparse[::8, ::16] = 1.5  # 32 nonzeros; gaps 15 within a row, 463 between rows (one uint8 escape each)
    e = encode_weight(sparse)
    assert e["encoding"] == "delta" and e["deltas"].dtype == torch.uint8 and entry_nbytes(e) == 32 * 4 + 32 + 7
    for w in (nearly_full, half, sparse):
        assert torch.equal(decode_entry(encode_weight(w)), w)


def test_int8_by_hand():
    w = torch.tensor([[0.0, 1.27, -0.64], [0.02, 0.0, 0.0]])
    e = encode_weight(w, "int8")  # scale = 1.27 / 127 = 0.01
    assert e["values"].dtype == torch.int8 and e["scale"].shape == ()
    assert e["values"].tolist() == [127, -64, 2]
    assert torch.allclose(decode_entry(e), w, atol=1e-6)
    e = encode_weight(w, "int8", per_channel=True)  # row scales 0.01 and 0.02 / 127
    assert e["scale"].shape == (2,) and e["values"].tolist() == [127, -64, 127]
    assert torch.allclose(decode_entry(e)[1], w[1], atol=1e-9)


# ------------------------------------------------------------------------------------------------ round trips
def test_float32_round_trip_is_exact(tiny, test_batch):
    _, ckpt, compact, stdout = tiny
    assert is_compact_file(compact) and not is_compact_file(ckpt)
    raw = torch.load(compact, weights_only=True)  # plain data: no code runs
    assert raw["format"] == COMPACT_FORMAT and "state_dict" not in raw
    assert raw["export"]["dtype"] == "float32"
    encodings = {k: e["encoding"] for k, e in raw["tensors"].items() if e["encoding"] != "raw"}
    assert set(encodings) == {f"{name}.weight" for name in LAYERS}
    assert encodings["features.0.0.weight"] == "dense"  # the unpruned first layer
    assert all(encodings[f"{n}.weight"] in ("bitmask", "delta") for n in LAYERS if n != "features.0.0")
    original, restored = load_checkpoint(ckpt), load_compact(compact)
    so, sr = original.net.state_dict(), restored.net.state_dict()
    assert so.keys() == sr.keys() and all(torch.equal(so[k], sr[k]) for k in so)
    assert restored.spec == original.spec and restored.metrics == original.metrics
    assert restored.compression == original.compression
    with torch.no_grad():
        assert torch.equal(simulate(original.net, test_batch, T), simulate(restored.net, test_batch, T))
    acc = raw["export"]["accuracy"]
    assert acc["split"] == "test" and acc["before"] == acc["after"]
    assert f"test accuracy: before {acc['before']:.4f}, after {acc['after']:.4f} (change +0.00 points)" in stdout
    payload = sum(entry_nbytes(e) for e in read_compact(compact)["tensors"].values())
    assert payload == raw["blob_bytes"] >= raw["blob"].numel()  # every tensor's bytes, in one blob, deflated
    dense = sum(v.numel() * v.element_size() for v in so.values())
    assert payload < 0.6 * dense and f"tensor payload: {payload} bytes" in stdout


@pytest.mark.parametrize("options", [["--dtype", "float16"], ["--dtype", "int8"], ["--dtype", "int8", "--per-channel"]])
def test_float16_and_int8_load_run_and_state_the_accuracy_change(tiny, test_batch, options):
    root, ckpt, compact, _ = tiny
    out = root / f"compact-{'-'.join(o.strip('-') for o in options)}.pt"
    code, stdout, err = cli("export", ckpt, "--out", out, "--device", "cpu", *options)
    assert code == 0, err
    raw = read_compact(out)
    acc = raw["export"]["accuracy"]
    change = 100 * (acc["after"] - acc["before"])
    assert f"test accuracy: before {acc['before']:.4f}, after {acc['after']:.4f} (change {change:+.2f} points)" in stdout
    value_dtype = torch.float16 if options[1] == "float16" else torch.int8
    original = load_checkpoint(ckpt)
    restored = load_compact(out)
    for name in LAYERS:
        entry = raw["tensors"][f"{name}.weight"]
        assert entry["values"].dtype == value_dtype
        w, r = original.net.state_dict()[f"{name}.weight"], restored.net.state_dict()[f"{name}.weight"]
        if value_dtype == torch.float16:
            assert torch.equal(r, w.half().float())
        else:
            scale = entry["scale"]
            assert scale.shape == ((w.shape[0],) if "--per-channel" in options else ())
            bound = (scale.reshape(-1, *[1] * (w.dim() - 1)) if scale.dim() else scale) / 2 + 1e-7
            assert ((r - w).abs() <= bound).all()
        assert ((r != 0) <= (w != 0)).all()  # never a weight where the mask has none
    assert entry_nbytes(raw["tensors"]["classifier.0.1.weight"]) < entry_nbytes(
        read_compact(compact)["tensors"]["classifier.0.1.weight"])
    with torch.no_grad():
        counts = simulate(restored.net, test_batch, T)
    assert counts.shape == (len(test_batch), 10) and torch.isfinite(counts).all()


def test_export_refuses_per_channel_without_int8(tiny):
    root, ckpt, _, _ = tiny
    assert_user_error(*cli("export", ckpt, "--out", root / "x.pt", "--per-channel"), "--per-channel", "int8")
    assert not (root / "x.pt").exists()


# ------------------------------------------------------------------------------------------------ evaluate, report
def test_evaluate_accepts_compact_files(tiny):
    root, ckpt, compact, _ = tiny
    results = []
    for f in (ckpt, compact):
        code, _, err = cli("evaluate", f, "--device", "cpu", "--json", root / "eval.json")
        assert code == 0, err
        results.append(json.loads((root / "eval.json").read_text()))
    assert results[0] == results[1]


def test_report_json_keys_and_numbers_by_hand(tiny):
    root, ckpt, compact, _ = tiny
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    stored = {k: entry_nbytes(e) for k, e in read_compact(compact)["tensors"].items()}
    reports = {}
    net = load_checkpoint(ckpt).net.eval()
    val = load_data("digits").val
    x = torch.stack([val[i][0] for i in range(len(val))])
    judged = exact_counts(net, lambda: simulate(net, x, T, "direct"), len(val))
    for f in (ckpt, compact):
        code, stdout, err = cli("report", f, "--device", "cpu", "--json", root / "report.json")
        assert code == 0, err
        assert "total" in stdout and "features.3.0" in stdout
        reports[f] = report = json.loads((root / "report.json").read_text())
        assert tuple(report) == REPORT_KEYS and tuple(report["total"]) == TOTAL_KEYS
        assert report["file"] == str(f) and report["file_bytes"] == f.stat().st_size
        assert (report["data"], report["split"], report["samples"], report["T"]) == ("digits", "val", 270, T)
        assert report["energy_constants"] == {"fp32": {"e_mac": 4.6, "e_ac": 0.9}, "int8": {"e_mac": 0.2, "e_ac": 0.03}}
        assert [layer["name"] for layer in report["layers"]] == list(LAYERS)
        for layer in report["layers"]:
            assert tuple(layer) == LAYER_KEYS
            kind, n, positions = LAYERS[layer["name"]]
            w = state[f"{layer['name']}.weight"]
            nonzero = int(torch.count_nonzero(w))
            assert (layer["kind"], layer["weights"], layer["nonzero"], layer["positions"]) == (kind, n, nonzero, positions)
            exact = judged[layer["name"]]  # the independent count (tests/exact_count.py)
            assert layer["macs"] == pytest.approx(exact["macs"]) and layer["dense_ops"] == pytest.approx(exact["dense"])
            # the 3x3 convs have padding 1: their border taps read outside the input, so fewer than positions x T
            assert layer["macs"] <= positions * T * nonzero and layer["dense_ops"] <= positions * T * n
            assert layer["analog_input"] == (layer["name"] == "features.0.0")
            if layer["analog_input"]:
                assert layer["synops"] == 0 and layer["effective_macs"] == pytest.approx(exact["effective"])
                assert layer["energy_pj_fp32"] == pytest.approx(4.6 * layer["macs"])
                assert layer["energy_pj_int8"] == pytest.approx(0.2 * layer["macs"])
            else:
                assert 0 <= layer["input_rate"] <= 1
                assert layer["effective_macs"] == 0 and layer["synops"] == pytest.approx(exact["effective"])
                assert layer["energy_pj_fp32"] == pytest.approx(0.9 * layer["synops"])
                assert layer["energy_pj_int8"] == pytest.approx(0.03 * layer["synops"])
            assert layer["bytes_dense"] == 4 * n
            assert layer["bytes_compact"] == stored[f"{layer['name']}.weight"]
        for key in LAYER_KEYS[LAYER_KEYS.index("weights"):]:
            assert report["total"][key] == pytest.approx(sum(layer[key] for layer in report["layers"]))
        total = report["total"]
        assert total["connection_sparsity"] == pytest.approx(1 - total["nonzero"] / total["weights"])
        assert 0 < total["activation_sparsity"] < 1
        assert total["footprint_bytes"] == sum(4 * v.numel() for v in state.values() if v.is_floating_point()) + sum(
            8 * v.numel() for v in state.values() if not v.is_floating_point())
    a, b = reports[ckpt], reports[compact]
    assert a["layers"] == b["layers"] and a["accuracy"] == b["accuracy"]
    assert a["total"]["weights"] == 36 + 288 + 512 + 160


# ------------------------------------------------------------------------------------------------ damaged files
def test_truncated_compact_file_is_one_line(tiny):
    root, _, compact, _ = tiny
    bad = root / "truncated.pt"
    bad.write_bytes(compact.read_bytes()[: compact.stat().st_size // 2])
    for command in ("evaluate", "report"):
        assert_user_error(*cli(command, bad, "--device", "cpu"), str(bad))


def test_corrupt_compact_file_is_one_line(tiny):
    root, _, compact, _ = tiny
    import struct
    import zipfile

    raw = read_compact(compact)  # the entries with their tensors (the file holds them in one deflated blob)
    values = raw["tensors"]["classifier.0.1.weight"]["values"]
    with zipfile.ZipFile(compact) as archive:  # the blob is the file's one tensor: its storage member is data/0
        (info,) = [i for i in archive.infolist() if i.filename.endswith("/data/0")]
    data = bytearray(compact.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[at] ^= 0xFF  # a flipped byte inside the blob: torch's reader does not notice, zlib's check does
    bad = root / "corrupt.pt"
    bad.write_bytes(bytes(data))
    assert is_compact_file(bad)
    for command in ("evaluate", "report"):
        assert_user_error(*cli(command, bad, "--device", "cpu"), "corrupt compact file", "blob")
    # a consistent blob whose tensors were altered: the checksum notices
    from rccsnn.formats.compact import deflate, pack_blob

    altered = {name: dict(entry) for name, entry in raw["tensors"].items()}
    altered["classifier.0.1.weight"]["values"] = values.flip(0)
    refs, blob = pack_blob(altered)
    on_disk = torch.load(compact, weights_only=True)
    on_disk.update(tensors=refs, blob=deflate(blob), blob_bytes=blob.numel())
    torch.save(on_disk, bad)
    for command in ("evaluate", "report"):
        assert_user_error(*cli(command, bad, "--device", "cpu"), "corrupt compact file", "checksum")
    raw["tensors"]["classifier.0.1.weight"]["values"] = values[:-1]  # consistent checksum, inconsistent layout
    from rccsnn.formats.compact import tensor_digest

    raw["checksum"] = tensor_digest(raw["tensors"])
    torch.save(raw, bad)
    assert_user_error(*cli("evaluate", bad, "--device", "cpu"), "corrupt compact file", "classifier.0.1.weight")


# ------------------------------------------------------------------------------------------------ NIR
def test_nir_without_the_extra_is_one_line(tiny, monkeypatch):
    root, ckpt, _, _ = tiny
    monkeypatch.setitem(sys.modules, "nir", None)  # import nir now raises ImportError
    line = assert_user_error(*cli("export", ckpt, "--format", "nir", "--out", root / "m.nir"), "pip install")
    assert "rccsnn[nir]" in line and not (root / "m.nir").exists()


def test_nir_refuses_branching_networks():
    pytest.importorskip("nir")
    from rccsnn.models.checkpoint import LoadedModel, ModelSpec
    from rccsnn.snn import LIF, NeuronConfig, PerStep

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = PerStep(torch.nn.Flatten(), torch.nn.Linear(64, 64))
            self.lif = LIF(NeuronConfig())

        def forward(self, x):
            return self.lif(self.fc(x) + x.flatten(2))

    loaded = LoadedModel(net=Residual(), spec=ModelSpec(arch="x", input_shape=(1, 8, 8), num_classes=64))
    with pytest.raises(UserError, match="chains of layers"):
        nir_graph(loaded)


def test_nir_round_trip(tiny, test_batch):
    """Needs nir and nirtorch (the nir extra; the test extra installs them where Python >= 3.10, as in CI).

    Writes the tiny model's graph, reads it back with nir.read, checks every node and parameter exactly, then runs
    it with snntorch's NIR importer (plus maps for SumPool2d and Threshold, which it lacks) against rccsnn's own
    simulation. NIR's LIF resets to zero, so the run uses the same weights with reset: zero.
    """
    nir = pytest.importorskip("nir")
    nirtorch = pytest.importorskip("nirtorch")
    from snntorch.import_nir import _nir_to_snntorch_module

    from rccsnn.models.checkpoint import LoadedModel
    from rccsnn.models import build_model

    root, ckpt, _, _ = tiny
    path = root / "tiny.nir"
    code, stdout, err = cli("export", ckpt, "--format", "nir", "--out", path, "--device", "cpu")
    assert code == 0, err
    assert "resets to v_reset = 0" in stdout and "NIR graph:" in stdout
    graph = nir.read(path)
    chain = ["input", "features.0.0", "features.1", "features.2.0", "features.2.0.threshold", "features.3.0",
             "features.4", "features.5.0", "features.5.0.threshold", "classifier.0.0", "classifier.0.1",
             "classifier.1", "classifier.2.0", "classifier.3", "output"]
    assert sorted(graph.nodes) == sorted(chain)
    assert [tuple(e) for e in graph.edges] == list(zip(chain, chain[1:]))
    types = {k: type(v).__name__ for k, v in graph.nodes.items()}
    assert [types[k] for k in chain] == ["Input", "Conv2d", "LIF", "SumPool2d", "Threshold", "Conv2d", "LIF",
                                         "SumPool2d", "Threshold", "Flatten", "Affine", "LIF", "Affine", "LIF", "Output"]
    loaded = load_checkpoint(ckpt)
    state = loaded.net.state_dict()
    for conv, bn in (("features.0.0", "features.0.1"), ("features.3.0", "features.3.1")):
        s = state[f"{bn}.weight"].double() / torch.sqrt(state[f"{bn}.running_var"].double() + 1e-5)
        w = (state[f"{conv}.weight"].double() * s.reshape(-1, 1, 1, 1)).float()
        b = (state[f"{bn}.bias"].double() - state[f"{bn}.running_mean"].double() * s).float()
        node = graph.nodes[conv]
        assert np.array_equal(node.weight, w.numpy()) and np.array_equal(node.bias, b.numpy())
        assert ((node.weight != 0) == (state[f"{conv}.weight"] != 0).numpy()).all()  # sparsity survives folding
    for fc in ("classifier.0.1", "classifier.2.0"):
        assert np.array_equal(graph.nodes[fc].weight, state[f"{fc}.weight"].numpy())
        assert np.array_equal(graph.nodes[fc].bias, state[f"{fc}.bias"].numpy())
    lif = graph.nodes["features.1"]
    assert lif.tau.shape == (4, 8, 8) and np.allclose(lif.tau, 2e-4) and np.allclose(lif.r, 2.0)  # beta 0.5
    assert (lif.v_threshold == 1.0).all() and (lif.v_reset == 0).all() and (lif.v_leak == 0).all()
    assert graph.nodes["classifier.3"].tau.shape == (10,)
    assert graph.nodes["features.2.0.threshold"].threshold.shape == (4, 4, 4)
    assert int(graph.metadata["T"]) == T

    # run it back: the same weights with NIR's reset-to-zero
    spec = loaded.spec
    spec.neuron.reset = "zero"
    net = build_model(spec.arch, spec.input_shape, spec.num_classes, spec.neuron, spec.args)
    net.load_state_dict(state)
    net.eval()
    zero = LoadedModel(net=net, spec=spec)
    path = root / "tiny-zero.nir"
    from rccsnn.formats.nir import export_nir

    export_nir(zero, path)

    class Threshold(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.register_buffer("threshold", torch.from_numpy(node.threshold))

        def forward(self, x):
            return (x > self.threshold).to(x.dtype)

    class SumPool(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.k, self.s, self.p = (tuple(int(v) for v in a) for a in (node.kernel_size, node.stride, node.padding))

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, self.k, self.s, self.p, divisor_override=1)

    snn = lambda node: _nir_to_snntorch_module(node, init_hidden=True)  # noqa: E731
    node_map = {nir.Conv2d: snn, nir.Affine: snn, nir.LIF: snn, nir.SumPool2d: SumPool, nir.Threshold: Threshold,
                # snntorch maps NIR's batchless start_dim straight to torch, which would flatten the batch too
                nir.Flatten: lambda n: torch.nn.Flatten(n.start_dim + 1, n.end_dim + 1 if n.end_dim >= 0 else n.end_dim)}
    imported = nirtorch.nir_to_torch(nir.read(path), node_map)
    lifs = ["features.1", "features.4", "classifier.1", "classifier.3"]
    ours, theirs = {}, {name: [] for name in lifs}
    handles = [net.get_submodule(name).register_forward_hook(
        lambda m, i, o, name=name: ours.__setitem__(name, o)) for name in lifs]
    handles += [imported.get_submodule(name.replace(".", "_")).register_forward_hook(
        lambda m, i, o, name=name: theirs[name].append(o)) for name in lifs]
    x = test_batch
    with torch.no_grad():
        expected = net(x.unsqueeze(0).expand(T, *x.shape))
        state_, steps = None, []
        for _ in range(T):
            y, state_ = imported(x, state_)
            steps.append(y)
    for h in handles:
        h.remove()
    # BatchNorm folding rounds differently from conv-then-BN, so a membrane exactly at threshold could flip a
    # spike; on this batch none does: every spiking layer agrees at every step, and so does the output
    assert sum(float(ours[name].sum()) for name in lifs) > 0
    for name in lifs:
        assert torch.equal(torch.stack(theirs[name]), ours[name]), name
    assert torch.equal(torch.stack(steps), expected)


# ------------------------------------------------------------------------------------------------ the blob (v2)
def test_the_blob_holds_every_dtype_and_shape_and_gives_them_back():
    from rccsnn.formats.compact import pack_blob, unpack_blob

    tensors = {"b": {"encoding": "raw", "value": torch.tensor(7, dtype=torch.int64)},
               "a": {"encoding": "delta", "shape": [3, 5], "dtype": "float32", "values": torch.randn(4),
                     "deltas": torch.tensor([1, 2, 300, 4], dtype=torch.int32).to(torch.uint16)},
               "c": {"encoding": "raw", "value": torch.zeros(0, 3, dtype=torch.float16)},
               "d": {"encoding": "raw", "value": torch.tensor([True, False, True])},
               "e": {"encoding": "bitmask", "values": torch.arange(5, dtype=torch.uint8), "scale": torch.rand(2),
                     "bits": 3, "bitmask": torch.tensor([255, 1], dtype=torch.uint8),
                     "big": torch.tensor([2 ** 31 + 5], dtype=torch.int64).to(torch.uint32)}}
    packed, blob = pack_blob(tensors)
    assert blob.dtype == torch.uint8 and blob.dim() == 1
    assert not any(isinstance(v, torch.Tensor) for entry in packed.values() for v in entry.values())
    back = unpack_blob(packed, blob)
    assert back.keys() == tensors.keys()
    for name, entry in tensors.items():
        assert back[name].keys() == entry.keys()
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                got = back[name][key]
                assert got.dtype == value.dtype and got.shape == value.shape
                assert torch.equal(got.reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key
            else:
                assert back[name][key] == value
    packed["a"]["values"]["blob"] = [blob.numel() - 2, 16]
    with pytest.raises(ValueError, match="does not fit the blob"):
        unpack_blob(packed, blob)
    from rccsnn.formats.compact import deflate, inflate

    squeezed = deflate(blob)
    assert torch.equal(inflate(squeezed, blob.numel()), blob)
    for size in (blob.numel() - 1, blob.numel() + 1, 0):  # never more than announced, nor less
        with pytest.raises(ValueError, match="does not decompress to its"):
            inflate(squeezed, size)
    with pytest.raises(ValueError, match="does not decompress to its"):  # trailing bytes after the stream
        inflate(torch.cat([squeezed, torch.tensor([1, 2, 3], dtype=torch.uint8)]), blob.numel())
    with pytest.raises(ValueError, match="bad blob size"):
        inflate(squeezed, 2 ** 63)
    assert inflate(deflate(torch.zeros(0, dtype=torch.uint8)), 0).numel() == 0


def test_a_version_1_file_still_loads_to_the_same_network(tiny, tmp_path):
    """Version 1 held each entry's tensors inline: a file written that way loads to the same state as version 2."""
    from rccsnn.formats.compact import same_state

    _, _, compact, _ = tiny
    raw = read_compact(compact)
    assert raw["format_version"] == 2 and "blob" not in raw
    raw["format_version"] = 1
    torch.save(raw, tmp_path / "v1.pt")
    assert same_state(load_compact(tmp_path / "v1.pt").net, load_compact(compact).net)
    # a version 2 blob stored as it is (no blob_bytes: one development commit wrote them) loads too
    from rccsnn.formats.compact import pack_blob

    on_disk = torch.load(compact, weights_only=True)
    on_disk["tensors"], on_disk["blob"] = pack_blob(raw["tensors"])
    del on_disk["blob_bytes"]
    torch.save(on_disk, tmp_path / "raw-blob.pt")
    assert same_state(load_compact(tmp_path / "raw-blob.pt").net, load_compact(compact).net)
    on_disk["blob_bytes"] = 2 ** 63  # an absurd size is a one-line error, not a traceback
    torch.save(on_disk, tmp_path / "huge.pt")
    assert_user_error(*cli("evaluate", tmp_path / "huge.pt", "--device", "cpu"), "corrupt compact file")
    assert torch.load(compact, weights_only=True)["blob"].dtype == torch.uint8  # what v2 writes
