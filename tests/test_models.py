"""Model zoo: every registered architecture builds, runs multi-step and has exactly the hand-computed size."""
from __future__ import annotations

import inspect

import pytest
import torch

from rccsnn.errors import UserError
from rccsnn.models import MODELS, build_model
from rccsnn.snn import NeuronConfig, weight_layers

T, B = 2, 2

# name -> (input_shape, arch_args, number of parameters), slim settings so the suite stays fast on 2 CPU cores.
# Counts: conv weights out*in*k*k, BatchNorm weight + bias (2 * channels), Linear weight + bias where present;
# snntorch Leaky neurons hold only buffers.
CASES = {
    "convsnn": (
        (1, 8, 8),
        {},
        1 * 32 * 9 + 2 * 32  # conv 1->32, BN
        + 32 * 64 * 9 + 2 * 64  # conv 32->64, BN; two pools: 8x8 -> 2x2
        + 64 * 2 * 2 * 256 + 256  # FC 256 -> 256
        + 256 * 10 + 10,  # FC 256 -> 10
    ),
    "cifar10net": (
        (3, 32, 32),
        {"channels": 16, "hidden": 64},
        3 * 16 * 9 + 2 * 16  # encoding conv, BN
        + 5 * (16 * 16 * 9 + 2 * 16)  # five convs, BN; two pools: 32x32 -> 8x8
        + 16 * 8 * 8 * 64  # FC, no bias
        + 64 * 10 * 10,  # FC to 10 voting neurons per class, no bias
    ),
    "vgg16": (
        (3, 32, 32),
        {"width": 0.125, "fc": (64, 64)},  # channels 8, 8, 16, 16, 32 x3, 64 x3, 64 x3; five pools: 32x32 -> 1x1
        3 * 8 * 9 + 8 * 8 * 9
        + 8 * 16 * 9 + 16 * 16 * 9
        + 16 * 32 * 9 + 2 * 32 * 32 * 9
        + 32 * 64 * 9 + 2 * 64 * 64 * 9
        + 3 * 64 * 64 * 9
        + 2 * (2 * 8 + 2 * 16 + 3 * 32 + 6 * 64)  # BN of the 13 convs
        + 64 * 1 * 1 * 64 + 64  # FC 64 -> 64
        + 64 * 64 + 64  # FC 64 -> 64
        + 64 * 10 + 10,  # FC 64 -> 10
    ),
    "resnet19": (
        (3, 32, 32),
        {"widths": (8, 16, 32), "hidden": 16},
        3 * 8 * 9 + 2 * 8  # stem
        + 3 * (2 * 8 * 8 * 9 + 2 * 2 * 8)  # stage 1: three identity blocks
        + (8 * 16 * 9 + 16 * 16 * 9 + 2 * 2 * 16) + (8 * 16 + 2 * 16)  # stage 2, block 1 + conv1x1 shortcut
        + 2 * (2 * 16 * 16 * 9 + 2 * 2 * 16)  # stage 2: two identity blocks
        + (16 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32) + (16 * 32 + 2 * 32)  # stage 3, block 1 + shortcut
        + 1 * (2 * 32 * 32 * 9 + 2 * 2 * 32)  # stage 3: one identity block
        + 32 * 16 + 16  # FC 32 -> 16 after global average pooling
        + 16 * 10 + 10,  # FC 16 -> 10
    ),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_has_a_case():
    assert set(MODELS.names()) <= set(CASES), "add the new architecture to CASES"


@pytest.mark.parametrize("name", MODELS.names())
def test_model_builds_runs_and_has_the_exact_size(name):
    torch.manual_seed(0)
    input_shape, arch_args, expected = CASES[name]
    model = build_model(name, input_shape, 10, NeuronConfig(), arch_args)
    assert n_params(model) == expected
    x = torch.rand(T, B, *input_shape)
    out = model(x)
    assert out.shape == (T, B, 10)
    assert ((out >= 0) & (out <= 1)).all()  # spikes, or voting rates for cifar10net
    out.sum().backward()  # surrogate gradients reach the first layer
    first = next(m for _, m in weight_layers(model))
    assert first.weight.grad is not None


def test_cifar10net_full_size_has_the_papers_36_7m_weights():
    model = build_model("cifar10net", (3, 32, 32), 10, NeuronConfig())
    weights = {name: m.weight.numel() for name, m in weight_layers(model)}
    assert list(weights.values()) == [3 * 256 * 9] + [256 * 256 * 9] * 5 + [16384 * 2048, 2048 * 100]
    assert sum(weights.values()) == 36_715_264


def test_cifar10net_votes_over_groups_of_ten():
    model = build_model("cifar10net", (3, 8, 8), 10, NeuronConfig(), {"channels": 4, "hidden": 8}).eval()
    out = model(torch.rand(T, B, 3, 8, 8))
    assert torch.allclose(out * 10, (out * 10).round())  # means of ten spikes


def test_convsnn_builds_for_mnist_size():
    model = build_model("convsnn", (1, 28, 28), 10, NeuronConfig())
    assert n_params(model) == 1 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64 + 64 * 7 * 7 * 256 + 256 + 256 * 10 + 10
    assert model(torch.rand(T, B, 1, 28, 28)).shape == (T, B, 10)


def test_vgg16_skips_pooling_on_small_inputs():
    model = build_model("vgg16", (3, 8, 8), 10, NeuronConfig(), {"width": 0.0625, "fc": (16,)})
    assert model(torch.rand(T, B, 3, 8, 8)).shape == (T, B, 10)
    fc = next(m for _, m in weight_layers(model) if isinstance(m, torch.nn.Linear))
    assert fc.in_features == 32 * 1 * 1  # 8x8 reaches 1x1 after three pools; the last two are skipped


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(UserError) as err:
        build_model("vgg19", (3, 32, 32), 10, NeuronConfig())
    for name in MODELS.names():
        assert name in str(err.value)


def test_bad_arch_args_are_a_user_error():
    with pytest.raises(UserError, match="resnet19"):
        build_model("resnet19", (3, 32, 32), 10, NeuronConfig(), {"depth": 19})


def test_misspelt_or_mistyped_arch_args_name_the_argument():
    with pytest.raises(UserError, match=r"^architecture 'convsnn': bad arguments \{'chanels': \[4\]\}: "
                                        r"unknown option 'chanels' \(did you mean 'channels'\?\)$"):
        build_model("convsnn", (1, 8, 8), 10, NeuronConfig(), {"chanels": [4]})
    with pytest.raises(UserError, match=r"'hidden' must be an integer, got 'wide'"):
        build_model("convsnn", (1, 8, 8), 10, NeuronConfig(), {"hidden": "wide"})
    with pytest.raises(UserError, match=r"unknown option 'num_classes'"):  # fixed by the data set, not an arch arg
        build_model("convsnn", (1, 8, 8), 10, NeuronConfig(), {"num_classes": 3})


@pytest.mark.parametrize("name", MODELS.names())
def test_architectures_declare_their_arguments(name):
    """The data set's inputs come first, positional-only; every architecture argument is keyword-only and typed."""
    params = list(inspect.signature(MODELS.get(name)).parameters.values())
    assert [p.name for p in params[:3]] == ["input_shape", "num_classes", "neuron"]
    assert all(p.kind is p.POSITIONAL_ONLY for p in params[:3])
    assert params[3:] and all(p.kind is p.KEYWORD_ONLY and p.annotation is not p.empty for p in params[3:])
