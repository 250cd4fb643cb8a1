"""What the trainer checks before it loads anything heavy: the output directory, the head against the data's
labels, the ``init=`` path."""

from __future__ import annotations

import pytest
from train.test_train import make_cfg

from bigmodels.data import DataBundle
from bigmodels.errors import ConfigError
from bigmodels.train import Trainer, build_model_for_data
from bigmodels.train import trainer as trainer_module


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if the trainer gets as far as building the data."""

    def refuse(*args, **kwargs):
        raise AssertionError("the data was built before the bad setting was found")

    monkeypatch.setattr(trainer_module, "build_data", refuse)


@pytest.mark.parametrize("where", ["/proc/x", "a_file", "/dev/null", "a_file/below"])
def test_an_unusable_out_dir_is_refused_before_the_data_loads(tmp_path, where, no_data):
    (tmp_path / "a_file").write_text("not a directory")
    out = where if where.startswith("/") else str(tmp_path / where)
    with pytest.raises(ConfigError, match=rf"train\.out_dir={out}.*(directory|writable).*train\.out_dir=runs/NAME"):
        Trainer(make_cfg(tmp_path, "model=mlp_small", f"train.out_dir={out}"))


def test_a_new_out_dir_is_created_and_probed_without_leaving_files(tmp_path):
    out = tmp_path / "deep" / "new" / "run"
    with Trainer(make_cfg(out, "model=mlp_small", "train.steps=1")):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_a_head_smaller_than_the_data_classes_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.num_classes=3 .*10 classes.*model\.num_classes=10"):
        Trainer(make_cfg(tmp_path, "model=mlp_small", "model.num_classes=3"))
    with pytest.raises(ConfigError, match=r"model\.num_classes=12 .*10 classes"):
        Trainer(make_cfg(tmp_path, "model=cnn_small", "model.num_classes=12"))
    assert not (tmp_path / "checkpoints").exists()


def _bundle(task: str, **model_args) -> DataBundle:
    return DataBundle(task=task, train=[], val=[], test=None, model_args=model_args, train_transform=None,
                      eval_transform=None)


def test_token_classification_labels_and_vocabularies_are_checked_against_the_model():
    ner = _bundle("token_classification", num_labels=9)
    with pytest.raises(ConfigError, match=r"model\.num_labels=3 .*9 labels"):
        build_model_for_data("bert_mini", {"head": "token_classification", "num_labels": 3}, ner)
    assert build_model_for_data("bert_mini", {"head": "token_classification"}, ner).config.num_labels == 9
    text = _bundle("language_modeling", vocab_size=65)
    with pytest.raises(ConfigError, match=r"model\.vocab_size=50 .*65 tokens"):
        build_model_for_data("gpt_mini", {"vocab_size": 50}, text)
    build_model_for_data("gpt_mini", {"vocab_size": 128}, text)  # a larger table than the tokenizer needs is fine


@pytest.mark.parametrize("init", ["runs/no_such_run", "/no/such/dir", "no_such_name"])
def test_a_missing_init_path_is_named_first(tmp_path, init, no_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=rf"init={init}: no such (file or directory|local path)"):
        Trainer(make_cfg(tmp_path / "out", "model=mlp_small", f"init={init}"))
