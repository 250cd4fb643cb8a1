"""What `bigmodels.load` says when a path is wrong, and what a conversion keeps: paths before hub names, registry
names that are not checkpoints, weight mismatches named key by key, refused pickles, preprocessing that travels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision_fixtures import load_fixture, synthetic_state_dict

import bigmodels
from bigmodels.errors import CheckpointError
from bigmodels.infer.pipelines import pipeline
from bigmodels.interop.torchvision import IMAGENET_MEAN, IMAGENET_STD, read_state_dict
from bigmodels.io import resolve_checkpoint


@pytest.fixture
def no_hub(monkeypatch):
    """Record every call that would reach the Hugging Face hub (or its cache) instead of making it."""
    import huggingface_hub

    calls = []

    def snapshot_download(name, **kwargs):
        calls.append((name, kwargs.get("local_files_only", False)))
        raise huggingface_hub.errors.LocalEntryNotFoundError(f"{name} is not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_missing_local_path_shaped_like_a_hub_name_is_a_missing_path(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "gpt").mkdir(parents=True)
    with pytest.raises(CheckpointError) as e:
        bigmodels.load("runs/x")
    message = str(e.value)
    assert message.startswith("'runs/x' does not exist"), message
    assert "runs holds: gpt" in message and "hub" not in message
    assert no_hub == []  # runs/ is a local folder: the name is a local path, never sent to the hub
    # no such folder either: the path is missing first, and only then the hub name is not cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        resolve_checkpoint("someone/model")
    message = str(e.value)
    assert message.startswith("'someone/model' is no local path (no such file or directory)"), message
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert no_hub == [("someone/model", True)]  # the cache only: offline means offline


def test_a_registered_name_is_not_a_checkpoint_and_the_error_says_how_to_get_weights(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        bigmodels.load("gpt2")
    message = str(e.value)
    assert "'gpt2' is a registered model name, not a checkpoint" in message
    assert "bigmodels.create_model('gpt2')" in message and "random weights" in message
    assert "hub name" in message and "directory" in message and "does not exist" not in message
    with pytest.raises(CheckpointError, match="checkpoint 'nothing_here' does not exist"):
        bigmodels.load("nothing_here")
    assert no_hub == []


def test_weights_that_do_not_fit_their_config_name_the_keys(tmp_path):
    model = bigmodels.create_model("mlp_small")
    bigmodels.save(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    [first, *_] = sorted(state)
    wrong = {**state, first: torch.zeros(3, 5)}  # one tensor of another shape
    save_file(wrong, weights)
    with pytest.raises(CheckpointError) as e:
        bigmodels.load(tmp_path / "m")
    message = str(e.value)
    assert f"{first} {(3, 5)} in the file, {tuple(state[first].shape)} in the model" in message, message
    assert "()" not in message and "the weights belong to another model" in message
    # a key missing and one too many: named as well, with strict=True (the default)
    state[f"{first}_extra"] = state.pop(first)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=rf"missing \['{first}'\], unexpected \['{first}_extra'\]"):
        bigmodels.load(tmp_path / "m")
    # a Hugging Face directory whose config.json no longer fits its weights: named too, not a RuntimeError
    gpt = bigmodels.create_model("gpt_mini")
    bigmodels.save(gpt, tmp_path / "hf", format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    with pytest.raises(CheckpointError, match=r"config.json: other shapes \[") as e:
        bigmodels.load(tmp_path / "hf")
    assert f"({config['vocab_size']}, " in str(e.value) and "in the model" in str(e.value)


class _Payload:
    def __reduce__(self):
        return os.getcwd, ()


def test_a_refused_pickle_says_why_and_how_to_convert(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"w": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    message = str(e.value)
    assert "refused" in message and "not a safe format" in message and "safetensors" in message
    assert "trusted source" in message
    assert "weights_only=False" not in message and "two options" not in message  # no advice to unpickle
    # the same in a Hugging Face directory's legacy pytorch_model.bin
    bigmodels.save(bigmodels.create_model("gpt_mini"), tmp_path / "hf", format="hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1), "payload": _Payload()}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin was refused.*not a safe format") as e:
        bigmodels.load(tmp_path / "hf")
    assert "weights_only=False" not in str(e.value)


def _probabilities(model, image) -> list[tuple[str, float]]:
    return [(str(r["label"]).removeprefix("LABEL_").removeprefix("class "), r["score"])
            for r in pipeline("image-classification", model)(image, top_k=5)]


@pytest.mark.parametrize(("name", "fmt"), [("vit_b_16", "hf"), ("vit_b_16", "bigmodels"), ("resnet18", "bigmodels")])
def test_a_converted_torchvision_state_dict_keeps_its_preprocessing(tmp_path, name, fmt):
    record = load_fixture(name)
    torch.save(synthetic_state_dict(record["manifest"]), tmp_path / f"{name}.pth")
    image = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)).save(image)
    original = bigmodels.load(tmp_path / f"{name}.pth", model=name)
    bigmodels.save(original, tmp_path / "converted", format=fmt)
    converted = bigmodels.load(tmp_path / "converted")
    meta = converted.info.meta
    assert (meta["mean"], meta["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert (meta["img_size"], meta["resize_size"]) == (224, 256)
    before, after = _probabilities(original, str(image)), _probabilities(converted, str(image))
    assert [label for label, _ in before] == [label for label, _ in after]
    assert np.allclose([p for _, p in before], [p for _, p in after], atol=1e-5)
    if fmt == "hf":  # what transformers reads: resize the shorter side to 256, centre-crop 224, ImageNet statistics
        transformers = pytest.importorskip("transformers")
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "converted")
        assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
        assert list(processor.image_mean) == list(IMAGENET_MEAN) and processor.do_center_crop
    # and the CLI prints the same classes and probabilities for the .pth and the converted directory
    run = lambda *a: subprocess.run([sys.executable, "-m", "bigmodels", *a], capture_output=True, text=True)  # noqa: E731
    pth = run("predict", str(tmp_path / f"{name}.pth"), str(image), "--model", name)
    directory = run("predict", str(tmp_path / "converted"), str(image))
    assert pth.returncode == directory.returncode == 0, pth.stderr + directory.stderr
    assert _scores(pth.stdout) == _scores(directory.stdout) and len(_scores(pth.stdout)) == 5


def _scores(line: str) -> list[tuple[str, str]]:
    """'photo.png: class 164 0.032, ...' (or 'LABEL_164 0.032') -> [('164', '0.032'), ...]."""
    preds = line.strip().split(": ", 1)[1].split(", ")
    return [(p.rsplit(" ", 1)[0].split("_")[-1].split()[-1], p.rsplit(" ", 1)[1]) for p in preds]
