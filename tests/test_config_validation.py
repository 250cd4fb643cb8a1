"""Values that enter through the config are checked where they enter: each a ConfigError naming the fix."""

from __future__ import annotations

import pytest

import bigmodels
from bigmodels.config import resolve_run_config
from bigmodels.errors import ConfigError


@pytest.mark.parametrize("override, words", [
    ("optim.lr=nan", "finite"),
    ("optim.lr=inf", "finite"),
    ("optim.betas=[0.9,2]", "[0, 1)"),
    ("optim.eps=0", "> 0"),
    ("optim.momentum=1.5", "[0, 1)"),
    ("train.max_time=nan", "finite"),
    ("train.label_smoothing=nan", "finite"),
    ("data.val_fraction=1", "[0, 1)"),
])
def test_bad_numbers_are_refused_where_they_enter(override, words):
    with pytest.raises(ConfigError) as err:
        resolve_run_config(None, ["model=mlp_small", override])
    assert words in str(err.value) and override.split("=")[0] in str(err.value)


@pytest.mark.parametrize("name, key", [
    ("mlp_small", "dropout"), ("gpt_mini", "dropout"), ("bert_mini", "hidden_dropout_prob"),
    ("bert_mini", "attention_probs_dropout_prob"), ("vit_mini", "attention_dropout"), ("resnet_mini", "drop_rate"),
    ("transformer_mini", "activation_dropout"),
])
@pytest.mark.parametrize("value", [2.0, -0.1, 1.0])
def test_every_family_refuses_a_dropout_outside_0_1(name, key, value):
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\): it is a dropout probability"):
        bigmodels.create_model(name, **{key: value})


def test_a_valid_dropout_still_builds():
    assert bigmodels.create_model("mlp_small", dropout=0.5).config.dropout == 0.5


def test_yaml_errors_name_the_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: mlp_small\ndata: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        resolve_run_config(recipe)
    assert str(recipe) in str(err.value) and "<unicode string>" not in str(err.value)
