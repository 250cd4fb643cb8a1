"""Typed configs: dotted overrides, strict keys and types, validation, YAML recipes, round trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import bigmodels
from bigmodels.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    parse_value,
    replace_strict,
    resolve_run_config,
    to_dict,
)
from bigmodels.data.bundle import DATASETS
from bigmodels.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


# ------------------------------------------------------------------------------------------ parse_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3e-4", 0.0003),
        ("2", 2),
        ("-1", -1),
        ("0.5", 0.5),
        ("true", True),
        ("False", False),
        ("yes", True),
        ("off", False),
        ("null", None),
        ("None", None),
        ("[0.8, 0.9]", [0.8, 0.9]),
        ("[1,2,3]", [1, 2, 3]),
        ("{a: 1}", {"a": 1}),
        ("adamw", "adamw"),
        ("runs/x", "runs/x"),
    ],
)
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_value_broken_list_is_config_error():
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_value("[1, 2")


# ------------------------------------------------------------------------------------------ overrides


def test_float_override_in_exponent_notation():
    cfg = resolve_run_config(None, ["optim.lr=3e-4"])
    assert cfg.optim.lr == pytest.approx(0.0003)
    assert isinstance(cfg.optim.lr, float)


def test_int_value_for_float_field_becomes_float():
    cfg = resolve_run_config(None, ["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_double_dash_prefix_and_ints():
    cfg = resolve_run_config(None, ["--train.epochs=2", "--data.batch_size=16"])
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.data.batch_size == 16


def test_booleans_and_null():
    cfg = resolve_run_config(None, ["train.progress=false", "data.hflip=true", "train.steps=5", "train.epochs=null"])
    assert cfg.train.progress is False
    assert cfg.data.hflip is True
    assert cfg.train.epochs is None
    assert cfg.train.steps == 5


def test_list_into_tuple_field():
    cfg = resolve_run_config(None, ["optim.betas=[0.8,0.9]"])
    assert cfg.optim.betas == (0.8, 0.9)
    assert isinstance(cfg.optim.betas, tuple)


def test_model_name_and_model_args():
    cfg = resolve_run_config(None, ["model=mlp_small", "model.hidden=[32]", "model.dropout=0.1"])
    assert cfg.model == "mlp_small"
    assert cfg.model_args == {"hidden": [32], "dropout": 0.1}
    # the model args are checked (and coerced) when the model is built
    model = bigmodels.create_model(cfg.model, **cfg.model_args)
    assert model.config.hidden == (32,)


def test_later_override_wins():
    cfg = resolve_run_config(None, ["optim.lr=0.1", "optim.lr=0.2"])
    assert cfg.optim.lr == 0.2


def test_overrides_do_not_touch_defaults():
    resolve_run_config(None, ["optim.lr=0.5", "model.hidden=[8]"])
    fresh = RunConfig()
    assert fresh.optim.lr == OptimConfig().lr == 1e-3
    assert fresh.model_args == {}


def test_unknown_section_suggests_close_match():
    with pytest.raises(ConfigError) as info:
        resolve_run_config(None, ["optimm.lr=0.1"])
    msg = str(info.value)
    assert "optimm" in msg
    assert "Did you mean 'optim'" in msg
    for section in ("data", "optim", "sched", "train", "model"):
        assert section in msg


def test_unknown_key_names_it_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as info:
        resolve_run_config(None, ["optim.lrr=0.1"])
    msg = str(info.value)
    assert "lrr" in msg
    assert "Did you mean 'lr'" in msg
    assert "Valid keys:" in msg
    for f in dataclasses.fields(OptimConfig):
        assert f.name in msg


def test_unknown_key_without_close_match_still_lists_keys():
    with pytest.raises(ConfigError) as info:
        resolve_run_config(None, ["train.zzzzzz=1"])
    msg = str(info.value)
    assert "zzzzzz" in msg and "Did you mean" not in msg
    assert "epochs" in msg and "out_dir" in msg


def test_nested_key_in_flat_section_is_unknown():
    with pytest.raises(ConfigError, match="lr.x"):
        resolve_run_config(None, ["optim.lr.x=1"])


@pytest.mark.parametrize("item", ["optim.lr", "optim=3", "train=1"])
def test_malformed_overrides(item):
    with pytest.raises(ConfigError):
        resolve_run_config(None, [item])


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("train.epochs=abc", "train.epochs='abc' must be a whole number"),
        ("train.epochs=1.5", "train.epochs=1.5 must be a whole number"),
        ("train.progress=1", "must be true or false"),
        ("optim.lr=abc", "optim.lr='abc' must be a number"),
        ("optim.lr=true", "must be a number"),
        ("optim.betas=[0.9]", "must have 2 items"),
        ("optim.betas=0.9", "must be a list"),
        ("optim.betas=[0.9,x]", "optim.betas[1]"),
    ],
)
def test_wrong_types(item, fragment):
    with pytest.raises(ConfigError) as info:
        resolve_run_config(None, [item])
    assert fragment in str(info.value)


def test_numeric_looking_string_for_str_field():
    cfg = resolve_run_config(None, ["train.out_dir=2024"])
    assert cfg.train.out_dir == "2024"


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("optim.lr=-1", "optim.lr=-1"),
        ("optim.lr=0", "must be > 0"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.name=lamb", "choose one of sgd, adam, adamw"),
        ("optim.nesterov=true", "nesterov"),
        ("train.precision=fp8", "fp32, bf16, fp16"),
        ("train.device=tpu", "train.device='tpu'"),
        ("train.epochs=0", "train.epochs=0"),
        ("train.epochs=null", "at least one of"),
        ("train.grad_accum=0", "grad_accum"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("data.batch_size=0", "data.batch_size"),
        ("sched.name=poly", "constant, cosine, linear, step"),
        ("sched.min_lr_ratio=1.5", "sched.min_lr_ratio"),
        ("sched.step_size=0", "sched.step_size"),
    ],
)
def test_post_init_validation(item, fragment):
    with pytest.raises(ConfigError) as info:
        resolve_run_config(None, [item])
    assert fragment in str(info.value)


def test_nesterov_needs_sgd_with_momentum():
    cfg = resolve_run_config(None, ["optim.name=sgd", "optim.nesterov=true"])
    assert cfg.optim.nesterov is True and cfg.optim.name == "sgd"
    with pytest.raises(ConfigError, match="momentum > 0"):
        resolve_run_config(None, ["optim.name=sgd", "optim.momentum=0", "optim.nesterov=true"])


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (OptimConfig, {"lr": -1e-3}),
        (OptimConfig, {"name": "adam", "nesterov": True}),
        (TrainConfig, {"precision": "int8"}),
        (TrainConfig, {"epochs": None, "steps": None, "max_time": None}),
        (SchedConfig, {"warmup_steps": -1}),
        (DataConfig, {"val_fraction": -0.1}),
    ],
)
def test_dataclasses_validate_on_construction(cls, kwargs):
    with pytest.raises(ConfigError):
        cls(**kwargs)


def test_replace_strict_checks_keys_types_and_revalidates():
    base = OptimConfig()
    new = replace_strict(base, {"lr": 2, "betas": [0.5, 0.6]}, "optim")
    assert new.lr == 2.0 and new.betas == (0.5, 0.6)
    assert base.lr == 1e-3  # the original is untouched
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        replace_strict(base, {"lrr": 1}, "optim")
    with pytest.raises(ConfigError, match="must be > 0"):
        replace_strict(base, {"lr": -1}, "optim")


# ------------------------------------------------------------------------------------------ YAML recipes


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_recipe_model_mapping_goes_to_model_args(tmp_path):
    recipe = _write(
        tmp_path / "r.yaml",
        "model:\n  name: mlp_small\n  hidden: [32]\nmodel_args:\n  dropout: 0.1\n"
        "optim:\n  lr: 0.01\n  betas: [0.8, 0.95]\ntrain:\n  epochs: 3\nresult:\n  accuracy: 0.9\n",
    )
    cfg = resolve_run_config(recipe)
    assert cfg.model == "mlp_small"
    assert cfg.model_args == {"hidden": [32], "dropout": 0.1}
    assert cfg.optim.lr == 0.01 and cfg.optim.betas == (0.8, 0.95)
    assert cfg.train.epochs == 3
    # overrides apply on top of the recipe
    cfg = resolve_run_config(str(recipe), ["optim.lr=0.02", "model.hidden=[16]"])
    assert cfg.optim.lr == 0.02
    assert cfg.model_args["hidden"] == [16]


def test_recipe_model_as_plain_name(tmp_path):
    cfg = resolve_run_config(_write(tmp_path / "r.yaml", "model: cnn_keras\n"))
    assert cfg.model == "cnn_keras" and cfg.model_args == {}


def test_recipe_dict_input():
    cfg = resolve_run_config({"model": {"name": "char_gru", "hidden_size": 32}, "data": {"name": "pydoc"}})
    assert cfg.model == "char_gru" and cfg.model_args == {"hidden_size": 32}
    assert cfg.data.name == "pydoc"


def test_recipe_model_mapping_needs_name(tmp_path):
    with pytest.raises(ConfigError, match="needs a 'name'"):
        resolve_run_config(_write(tmp_path / "r.yaml", "model:\n  hidden: [32]\n"))


def test_recipe_unknown_key_in_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_run_config(_write(tmp_path / "r.yaml", "data:\n  nme: digits\n"))
    assert "nme" in str(info.value) and "Did you mean 'name'" in str(info.value)


def test_recipe_unknown_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_run_config(_write(tmp_path / "r.yaml", "trian:\n  epochs: 1\n"))
    assert "trian" in str(info.value) and "Did you mean 'train'" in str(info.value)


def test_recipe_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs='two' must be a whole number"):
        resolve_run_config(_write(tmp_path / "r.yaml", "train:\n  epochs: two\n"))


def test_recipe_section_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        resolve_run_config(_write(tmp_path / "r.yaml", "optim: 3\n"))


def test_non_mapping_yaml_names_the_path(tmp_path):
    path = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        resolve_run_config(path)
    assert str(path) in str(info.value) and "mapping" in str(info.value)


def test_invalid_yaml_names_the_path(tmp_path):
    path = _write(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(path) in str(info.value) and "not valid YAML" in str(info.value)


def test_missing_recipe_names_the_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        resolve_run_config(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)


def test_empty_recipe_gives_defaults(tmp_path):
    cfg = resolve_run_config(_write(tmp_path / "empty.yaml", ""))
    assert cfg == RunConfig()


# ------------------------------------------------------------------------------------------ round trip


def test_run_config_round_trip():
    cfg = resolve_run_config(None, [
        "model=char_gru", "model.hidden_size=32", "data.name=pydoc", "data.block_size=32", "optim.name=sgd",
        "optim.nesterov=true", "optim.betas=[0.5,0.6]", "sched.name=step", "sched.gamma=0.5", "train.steps=7",
        "train.epochs=null", "train.max_time=1.5", "train.progress=false",
    ])
    plain = to_dict(cfg)
    assert plain["optim"]["betas"] == [0.5, 0.6]  # tuples become lists (JSON/YAML-safe)
    back = from_dict(RunConfig, json.loads(json.dumps(plain)))
    assert back == cfg
    assert isinstance(back.optim, OptimConfig) and isinstance(back.optim.betas, tuple)
    assert back.train.epochs is None and back.train.max_time == 1.5


def test_apply_overrides_returns_validated_config():
    cfg = apply_overrides(RunConfig(), ["sched.warmup_steps=10"])
    assert cfg.sched.warmup_steps == 10 and isinstance(cfg.sched, SchedConfig)


# ------------------------------------------------------------------------------------------ shipped recipes


def test_there_are_recipes():
    assert RECIPES, f"no recipes found under {REPO / 'recipes'}"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_resolves_to_a_registered_model(recipe):
    cfg = resolve_run_config(recipe)
    spec = bigmodels.get_spec(cfg.model)  # raises ModelNotFoundError for a stale name
    assert spec.name == cfg.model
    replace_strict(spec.config, cfg.model_args, f"model ({cfg.model})")  # the recipe's model keys exist
    assert cfg.data.name in DATASETS


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_data_paths_point_at_shared_data(recipe, shared_data):
    cfg = resolve_run_config(recipe)
    if cfg.data.path is None:
        pytest.skip(f"{recipe.name} uses an embedded data set")
    # recipes are run from the repository root (`bigmodels train recipes/x.yaml`)
    path = (REPO / cfg.data.path).resolve()
    assert path.exists(), f"{recipe.name}: data.path {cfg.data.path} -> {path} does not exist"
    assert path.is_relative_to(shared_data.resolve())


def test_a_string_field_keeps_numeric_looking_text_and_quotes_force_a_string():
    cfg = resolve_run_config(None, ["model=3", "data.name=3", "train.out_dir=2024", "model.cell='12'"])
    assert cfg.model == "3" and cfg.data.name == "3" and cfg.train.out_dir == "2024" and cfg.model_args["cell"] == "12"
    assert resolve_run_config(None, ["data.path=null"]).data.path is None
