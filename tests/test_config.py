"""Configuration: YAML -> dataclasses with exact, one-line errors; CLI overrides win over the YAML."""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import pytest

from rccsnn.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    from_dict,
    load_config,
    parse_assignment,
    read_yaml,
    set_path,
    typed_kwargs,
    write_yaml,
)
from rccsnn.errors import UserError
from rccsnn.snn import NeuronConfig


# ------------------------------------------------------------------------------------------------ from_dict
def test_from_dict_builds_nested_dataclasses():
    cfg = from_dict(TrainConfig, {
        "data": {"name": "npz", "path": "x.npz", "batch_size": 8},
        "model": {"arch": "vgg16", "args": {"width": 0.5}, "T": 6, "neuron": {"beta": 0.25, "reset": "zero"}},
        "optim": {"lr": 1, "epochs": 3},
        "seed": 7,
    })
    assert cfg.data == DataConfig(name="npz", path="x.npz", batch_size=8)
    assert cfg.model == ModelConfig(arch="vgg16", args={"width": 0.5}, T=6,
                                    neuron=NeuronConfig(beta=0.25, reset="zero"))
    assert isinstance(cfg.model.neuron, NeuronConfig)
    assert cfg.optim == OptimConfig(lr=1.0, epochs=3)
    assert isinstance(cfg.optim.lr, float)  # an integer is accepted for a float
    assert cfg.seed == 7 and cfg.out == "runs/train" and cfg.checkpoint is None


def test_from_dict_empty_gives_the_defaults():
    assert from_dict(TrainConfig, {}) == TrainConfig()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sed": 1}, "unknown key 'sed' (did you mean 'seed'?)"),
        ({"optim": {"epoch": 3}}, "unknown key 'optim.epoch' (did you mean 'optim.epochs'?)"),
        ({"model": {"neuron": {"treshold": 2}}}, "unknown key 'model.neuron.treshold' (did you mean 'model.neuron.threshold'?)"),
    ],
)
def test_unknown_key_suggests_the_closest(data, message):
    with pytest.raises(UserError) as err:
        from_dict(TrainConfig, data)
    assert str(err.value) == message


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(UserError) as err:
        from_dict(OptimConfig, {"zzz": 1})
    assert str(err.value) == "unknown key 'zzz'; valid keys: lr, weight_decay, epochs, min_lr"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"seed": "3"}, "'seed' must be an integer, got '3'"),
        ({"seed": True}, "'seed' must be an integer, got True"),
        ({"seed": 1.5}, "'seed' must be an integer, got 1.5"),
        ({"optim": {"lr": "fast"}}, "'optim.lr' must be a number, got 'fast'"),
        ({"optim": {"lr": True}}, "'optim.lr' must be a number, got True"),
        ({"out": ["a", "b"]}, "'out' must be a string, got ['a', 'b']"),
        ({"checkpoint": 5}, "'checkpoint' must be a string, got 5"),
        ({"data": {"download": "yes please"}}, "'data.download' must be true or false, got 'yes please'"),
        ({"model": {"args": [1, 2]}}, "'model.args' must be a mapping, got [1, 2]"),
        ({"model": 3}, "'model' must be a mapping, got 3"),
        ({"model": {"neuron": "lif"}}, "'model.neuron' must be a mapping, got 'lif'"),
    ],
)
def test_wrong_types_are_named(data, message):
    with pytest.raises(UserError) as err:
        from_dict(TrainConfig, data)
    assert str(err.value) == message


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ([0.5, 1], [0.5, 1.0]), ((), [])])
def test_a_union_option_takes_the_first_type_that_fits(value, expected):
    def method(nodes: Union[str, Sequence[float]] = "auto") -> None: ...

    assert typed_kwargs(method, {"nodes": value}, "method.options.") == {"nodes": expected}


@pytest.mark.parametrize("value", [3, None, ["x"], {"a": 1}])
def test_a_union_option_names_every_type_it_takes(value):
    def method(nodes: Union[str, Sequence[float]] = "auto") -> None: ...

    with pytest.raises(UserError) as err:
        typed_kwargs(method, {"nodes": value}, "method.options.")
    assert str(err.value) == f"'method.options.nodes' must be a string or a list, got {value!r}"


# ------------------------------------------------------------------------------------------------ YAML
def test_read_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data:\n  name: digits\n   batch_size: 3\n")  # line 3 is indented wrongly
    with pytest.raises(UserError) as err:
        read_yaml(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3:")
    assert "YAML syntax error" in message
    assert "\n" not in message


def test_read_yaml_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_read_yaml_directory_is_not_a_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        read_yaml(tmp_path)


def test_read_yaml_empty_file_is_an_empty_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert read_yaml(path) == {}


def test_read_yaml_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="expected a mapping of settings at the top level, got list"):
        read_yaml(path)


def test_read_yaml_reads_exponent_floats(tmp_path):
    # `lr: 1e-3` is how learning rates are written; PyYAML's YAML 1.1 resolver reads it as the string '1e-3'.
    path = tmp_path / "recipe.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    cfg = load_config(TrainConfig, str(path), {})
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 0.0005


def test_write_yaml_round_trips(tmp_path):
    cfg = from_dict(TrainConfig, {"model": {"args": {"channels": [4]}, "neuron": {"beta": 0.75}},
                                  "checkpoint": "m.pt", "seed": 3})
    write_yaml(cfg, tmp_path / "config.yaml")
    assert load_config(TrainConfig, str(tmp_path / "config.yaml"), {}) == cfg


# ------------------------------------------------------------------------------------------------ overrides
def test_overrides_win_over_yaml(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("seed: 1\nout: runs/a\noptim:\n  lr: 0.5\n  epochs: 9\nmodel:\n  T: 2\n  neuron: {beta: 0.25}\n")
    cfg = load_config(TrainConfig, str(path), {
        "seed": 5, "optim.lr": 0.125, "model.neuron.beta": 0.75, "data.name": "npz", "out": None,
    })
    assert cfg.seed == 5
    assert cfg.optim.lr == 0.125 and cfg.optim.epochs == 9  # sibling keep their YAML value
    assert cfg.model.neuron.beta == 0.75 and cfg.model.T == 2
    assert cfg.data.name == "npz"
    assert cfg.out == "runs/a"  # None means "flag not given"


def test_override_with_unknown_key_is_named(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(TrainConfig, None, {"optim.lrr": 0.1})


def test_override_below_a_scalar_is_a_user_error():
    with pytest.raises(UserError, match="cannot set 'seed.x': 'seed' is not a mapping"):
        set_path({"seed": 3}, "seed.x", 1)


def test_load_config_validates():
    with pytest.raises(UserError, match="optim.epochs must be at least 1, got 0"):
        load_config(TrainConfig, None, {"optim.epochs": 0})
    with pytest.raises(UserError, match="neuron.reset must be one of subtract, zero, none"):
        load_config(TrainConfig, None, {"model.neuron.reset": "soft"})
    with pytest.raises(UserError, match="model.T must be at least 1"):
        load_config(TrainConfig, None, {"model.T": 0})


# ------------------------------------------------------------------------------------------------ --set
@pytest.mark.parametrize(
    "text, expected",
    [
        ("model.T=8", ("model.T", 8)),
        ("optim.lr=0.5", ("optim.lr", 0.5)),
        ("data.name=mnist", ("data.name", "mnist")),
        ("data.download=true", ("data.download", True)),
        (" seed = 3", ("seed", 3)),
        ("model.args={channels: [4, 8], hidden: 16}", ("model.args", {"channels": [4, 8], "hidden": 16})),
        ("out=a=b", ("out", "a=b")),
        ("checkpoint=", ("checkpoint", None)),
    ],
)
def test_parse_assignment(text, expected):
    assert parse_assignment(text) == expected


def test_parse_assignment_docstring_example():
    # The documented example, and the way learning rates are usually typed.
    assert parse_assignment("optim.lr=1e-3") == ("optim.lr", 0.001)


@pytest.mark.parametrize("text", ["model.T", "=3", " =3"])
def test_parse_assignment_needs_key_and_value(text):
    with pytest.raises(UserError, match="--set expects KEY=VALUE"):
        parse_assignment(text)


def test_parse_assignment_bad_yaml_value():
    with pytest.raises(UserError, match=r"--set model.args: cannot parse value '\{channels: \[4'"):
        parse_assignment("model.args={channels: [4")


def test_config_dataclasses_have_no_shared_mutable_defaults():
    a, b = TrainConfig(), TrainConfig()
    a.model.args["x"] = 1
    a.model.neuron.beta = 0.9
    assert b.model.args == {} and b.model.neuron.beta == 0.5
    assert dataclasses.asdict(b) == dataclasses.asdict(TrainConfig())
