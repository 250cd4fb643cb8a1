"""The written model contract (models/_contract.py) holds for every registered model.

Every preset, at its tiny size, conforms (check_contract finds nothing) and is an instance of the Protocol of
its kind; its ModelInfo survives save -> load; a module built by hand gets the clear error of model_info().
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import bigmodels
from bigmodels import list_models
from bigmodels.errors import ConfigError
from bigmodels.models import _contract
from bigmodels.models._contract import (
    KIND_OF_TASK,
    KINDS,
    ModelInfo,
    call,
    check_contract,
    example_inputs,
    kind_of,
    model_info,
    set_model_info,
)
from bigmodels.models.bert import Bert, BertConfig
from bigmodels.models.mlp import MLPClassifier, MLPConfig
from bigmodels.models.rnn import RNNConfig, RNNModel
from bigmodels.registry import TASKS, check_registered, get_spec, model_from_config
from bigmodels.testing import assert_conforms, tiny_model

ALL = list_models()
OLD_ATTRIBUTES = {"model_name", "family", "task", "meta"}  # what builders used to set by hand


def family_kinds(family: str) -> set[str]:
    """The kinds a family's presets have (one model class may serve several, e.g. an RNN classifier or LM)."""
    return {KIND_OF_TASK[get_spec(n).task] for n in ALL if get_spec(n).family == family}


def test_every_task_has_a_kind_and_every_kind_a_protocol():
    assert set(KIND_OF_TASK) == set(TASKS)
    assert TASKS is _contract.TASKS  # the contract defines the tasks; the registry re-exports them
    assert set(KIND_OF_TASK.values()) == set(KINDS)


@pytest.mark.parametrize("name", ALL)
def test_every_registered_model_conforms_to_the_protocol_of_its_kind(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    model = tiny_model(name)
    assert check_contract(model) == [] and check_registered(model) == []
    assert_conforms(model)
    kind = kind_of(model)
    assert kind == KIND_OF_TASK[spec.task]
    assert isinstance(model, KINDS[kind])
    matched = {k for k, protocol in KINDS.items() if isinstance(model, protocol)}
    if family_kinds(spec.family) == {kind}:  # a family of one kind satisfies exactly that Protocol
        assert matched == {kind}
    else:
        assert kind in matched and matched <= family_kinds(spec.family)
    assert dataclasses.is_dataclass(model.config)
    assert not OLD_ATTRIBUTES & set(vars(model)), "builders attach model.info, not loose attributes"
    assert model_info(model) is model.info
    assert (model.info.name, model.info.family, model.info.task, model.info.source) == (
        name, spec.family, spec.task, "registry")


@pytest.mark.parametrize("name", ALL)
def test_example_inputs_of_every_model_run(name):
    model = tiny_model(name).eval()
    x = example_inputs(model, 3, seq_len=8, seed=1)
    again = example_inputs(model, 3, seq_len=8, seed=1)
    first = next(iter(x.values())) if isinstance(x, dict) else x
    assert first.shape[0] == 3
    assert all(torch.equal(a, b) for a, b in zip(_tensors(x), _tensors(again), strict=True))  # seeded
    assert not all(torch.equal(a, b) for a, b in zip(_tensors(x), _tensors(example_inputs(model, 3, seq_len=8, seed=2)),
                                                      strict=True))
    with torch.no_grad():
        out = call(model, x)
    out = out[0] if isinstance(out, tuple) else out  # BERT pretraining: (MLM logits, NSP logits)
    assert out.shape[0] == 3 and torch.isfinite(out).all()


def _tensors(x) -> list[torch.Tensor]:
    return list(x.values()) if isinstance(x, dict) else [x]


# ---------------------------------------------------------------------------------------------- ModelInfo


def test_model_info_survives_save_and_load(tmp_path):
    model = tiny_model("cnn_small", num_classes=3)
    model.info.meta.update(class_names=["a", "b", "c"], mean=[0.5], std=[0.25], note={"nested": [1, 2]},
                           tokenizer=object())  # not JSON: left out of config.json
    bigmodels.save(model, tmp_path / "m")
    loaded = bigmodels.load(tmp_path / "m")
    info = loaded.info
    assert (info.name, info.family, info.task) == ("cnn_small", "cnn", "image_classification")
    assert (info.source, info.path) == ("bigmodels", str(tmp_path / "m"))
    assert info.meta == {"class_names": ["a", "b", "c"], "mean": [0.5], "std": [0.25], "note": {"nested": [1, 2]}}
    assert check_contract(loaded) == []
    # saved again (meta= given by the caller wins), and read back: the info round-trips a second time
    bigmodels.save(loaded, tmp_path / "again", meta={"mean": [0.1], "splits": {"test": "test"}})
    again = bigmodels.load(tmp_path / "again").info
    assert (again.name, again.family, again.task) == (info.name, info.family, info.task)
    assert again.meta == {**info.meta, "mean": [0.1], "splits": {"test": "test"}}
    with pytest.raises(ConfigError, match="JSON"):
        bigmodels.save(loaded, tmp_path / "bad", meta={"tokenizer": object()})


def test_a_head_that_decides_the_task_keeps_model_info_in_step(tmp_path):
    model = tiny_model("bert_mini")
    assert model_info(model).task == model.task == "masked_language_modeling"
    model.reset_classifier(3)  # BERT's head decides its task: a classifier now
    assert model_info(model).task == model.task == "sequence_classification"
    assert check_contract(model) == []
    bigmodels.save(model, tmp_path / "cls")
    loaded = bigmodels.load(tmp_path / "cls")
    assert loaded.info.name == "bert_mini" and loaded.info.task == "sequence_classification"


def test_a_module_built_by_hand_gets_the_clear_error_of_model_info(tmp_path):
    model = MLPClassifier(MLPConfig())  # not through the registry: no ModelInfo
    for use in (model_info, example_inputs):
        with pytest.raises(ConfigError, match=r"MLPClassifier carries no ModelInfo.*create_model"):
            use(model)
    with pytest.raises(ConfigError, match="create_model"):
        bigmodels.save(model, tmp_path / "m")
    [problem] = check_contract(model)
    assert "carries no ModelInfo" in problem and check_registered(model) == [problem]
    with pytest.raises(AssertionError, match="breaks the model contract"):
        assert_conforms(model)
    # its kind still follows from the one Protocol it satisfies, or the task its class decides
    assert kind_of(model) == "vision"
    assert kind_of(Bert(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=50))) == "encoder"
    with pytest.raises(ConfigError, match="model kinds"):
        kind_of(RNNModel(RNNConfig()))  # one class, two kinds: only its task can tell
    # attaching a ModelInfo makes it a bigmodels model
    set_model_info(model, ModelInfo(name="mlp", family="mlp", task="image_classification", source="hand"))
    assert check_contract(model) == [] and check_registered(model) == []
    assert kind_of(nn.DataParallel(model)) == "vision" and model_info(nn.DataParallel(model)) is model.info


def test_model_from_config_attaches_info_and_asks_for_an_ambiguous_task():
    model = model_from_config("mlp", MLPConfig(hidden=(16,)))
    assert (model.info.name, model.info.family, model.info.task) == ("mlp", "mlp", "image_classification")
    with pytest.raises(ConfigError, match="image_classification, language_modeling.*task="):
        model_from_config("rnn", RNNConfig())
    lm = model_from_config("rnn", {"head": "lm", "vocab_size": 20, "hidden_size": 8, "embed_dim": 8},
                           task="language_modeling", source="test", meta={"k": 1})
    assert (lm.info.task, lm.info.source, lm.info.meta) == ("language_modeling", "test", {"k": 1})
    assert check_contract(lm) == []


def test_foreign_formats_say_where_the_model_came_from(tmp_path):
    model = tiny_model("gpt_mini")
    bigmodels.save(model, tmp_path / "hf", format="hf")
    loaded = bigmodels.load(tmp_path / "hf")
    assert (loaded.info.source, loaded.info.path) == ("huggingface", str(tmp_path / "hf"))
    assert (loaded.info.family, loaded.info.task) == ("gpt", "language_modeling")
    assert check_contract(loaded) == []
    torch.save(tiny_model("resnet_mini").state_dict(), tmp_path / "r.pth")
    tv = bigmodels.load(tmp_path / "r.pth", model="resnet_mini")
    assert (tv.info.name, tv.info.source, tv.info.path) == ("resnet_mini", "torchvision", str(tmp_path / "r.pth"))
    assert check_contract(tv) == []
    assert not OLD_ATTRIBUTES & (set(vars(loaded)) | set(vars(tv)))


# ---------------------------------------------------------------------------------------------- the check itself


class _Flat(nn.Module):
    """An image classifier with only forward: no features, head or intermediates."""

    def __init__(self) -> None:
        super().__init__()
        self.config = MLPConfig()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_check_contract_names_what_is_broken():
    flat = set_model_info(_Flat(), ModelInfo(name="mlp", family="mlp", task="image_classification"))
    problems = check_contract(flat)
    assert [p.split("'")[1] for p in problems] == ["forward_features", "forward_head", "forward_intermediates",
                                                   "reset_classifier"]
    assert all(p.startswith("a vision model (image_classification) needs") for p in problems)

    model = tiny_model("cnn_small")
    forward = model.forward
    model.forward = lambda x: forward(x) + 1.0  # no longer features + head
    assert check_contract(model) == ["forward_head(forward_features(x)) differs from forward(x)"]

    gpt = tiny_model("gpt_mini")
    gpt.new_cache = lambda: None  # a cache that remembers nothing
    assert check_contract(gpt) == ["forward(ids[:, :k], cache=c) then forward(ids[:, k:], cache=c) with "
                                   "c = new_cache() differs from forward(ids)"]

    lm = tiny_model("char_lstm", head="classify")  # the preset says language model, the head classifies
    assert "a decoder gives logits (B, T, vocab_size)" in check_contract(lm)[0]

    wrong = tiny_model("bert_mini")
    wrong.info.family, wrong.info.name = "gpt", "nobody"
    registry_says = ["the gpt family's config is a GPTConfig, but the model carries a BertConfig",
                     "ModelInfo.name 'nobody' is neither a registered preset nor the family 'gpt'"]
    assert check_contract(wrong) == []  # a working encoder: only the registry knows better
    assert check_registered(wrong) == registry_says
    with pytest.raises(AssertionError, match="GPTConfig"):
        assert_conforms(wrong)
    wrong.info.family, wrong.info.name = "nofamily", "bert_mini"
    assert check_registered(wrong)[0].startswith("ModelInfo.family: unknown model family 'nofamily'")
    mislabelled = tiny_model("resnet_mini")
    mislabelled.info.family = "vit"
    assert check_registered(mislabelled)[0] == ("the vit family's config is a ViTConfig, but the model carries "
                                                "a ResNetConfig")
    unknown_task = tiny_model("mlp_small")
    unknown_task.info.task = "juggling"
    assert check_contract(unknown_task)[0].startswith("ModelInfo.task 'juggling' is not a registry task")

    undeclared = tiny_model("mlp_small")
    undeclared.config = {"hidden": (256, 256)}
    assert check_contract(undeclared)[0].startswith("MLPClassifier.config is a dict, not a dataclass instance")


def test_check_contract_leaves_the_mode_as_it_found_it():
    model = tiny_model("resnet_mini").train()
    assert check_contract(model) == [] and model.training
    assert check_contract(model.eval()) == [] and not model.training
