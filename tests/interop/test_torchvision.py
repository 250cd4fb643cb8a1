"""Plain state dicts (torchvision's format): safe reading, strict loading, the CLI's --model, predict."""

from __future__ import annotations

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
from bigmodels.infer.predict import _resize_center_crop, classify_images
from bigmodels.interop.torchvision import WEIGHTS, load_torchvision, read_state_dict


def _saved(tmp_path, name="cnn_small", **overrides):
    torch.manual_seed(0)
    model = bigmodels.create_model(name, **overrides).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_a_pth_state_dict_loads_strictly_and_gives_the_same_outputs(tmp_path):
    model, path = _saved(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    loaded = bigmodels.load(path, model="cnn_small")
    assert not loaded.training and loaded.info.source == "torchvision"
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the same weights as safetensors, wrapped in a training checkpoint, and saved from DDP ("module.")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "ckpt.pt")
    for other in (tmp_path / "w.safetensors", tmp_path / "ckpt.pt"):
        with torch.no_grad():
            assert torch.equal(bigmodels.load(other, model="cnn_small")(x), model(x))


class _Evil:
    """Unpickling this runs a shell command: exactly what weights_only=True must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unsafe_pickles_are_refused(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(path)
    assert not marker.exists()


def test_clear_errors_for_a_missing_model_name_wrong_file_and_mismatched_weights(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="model='resnet50'"):
        bigmodels.load(path)
    with pytest.raises(CheckpointError, match="does not fit cnn_keras"):
        bigmodels.load(path, model="cnn_keras")
    (tmp_path / "truncated.pth").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="could not be read"):
        bigmodels.load(tmp_path / "truncated.pth", model="cnn_small")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match="publishes no weights"):
        load_torchvision("cnn_small")


def test_the_torchvision_weights_table_names_registered_models():
    for name, weights in WEIGHTS.items():
        assert bigmodels.get_spec(name).task == "image_classification"
        assert weights.url.startswith("https://download.pytorch.org/models/") and weights.url.endswith(".pth")
        assert weights.crop_size <= weights.resize_size


def test_resize_center_crop_keeps_the_middle():
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    image[:, :, 50:150] = 255  # a white band in the middle half of the width
    out = _resize_center_crop(image, 64, 56)
    assert out.shape == (3, 56, 56) and out.dtype == torch.uint8
    assert out.float().mean() > 250  # the centred 56x56 of a 64x128 resize lies inside the band


def test_resnet_fixture_weights_load_through_the_pth_path_with_the_class_count_from_the_file(tmp_path):
    record = load_fixture("resnet18")
    state = synthetic_state_dict(record["manifest"])
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][:7], state["fc.bias"][:7]  # a 7-class fine-tune
    torch.save(state, tmp_path / "r18.pth")
    model = bigmodels.load(tmp_path / "r18.pth", model="resnet18")
    assert model.config.num_classes == 7
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_cli_predict_and_convert_take_a_state_dict_with_model(tmp_path):
    _, path = _saved(tmp_path)
    image = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(image)
    run = lambda *a: subprocess.run([sys.executable, "-m", "bigmodels", *a], capture_output=True, text=True)  # noqa: E731
    out = run("predict", str(path), str(image), "--model", "cnn_small", "--top-k", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{image}: class ") and out.stdout.count("class ") == 3
    out = run("convert", str(path), str(tmp_path / "converted"), "--model", "cnn_small", "--format", "bigmodels")
    assert out.returncode == 0, out.stderr
    assert bigmodels.load(tmp_path / "converted").config == bigmodels.create_model("cnn_small").config
    out = run("predict", str(path), str(image))
    assert out.returncode == 2 and out.stderr.startswith("error:") and "--model" in out.stderr
    assert "Traceback" not in out.stderr


def test_classify_images_reports_unreadable_files_and_goes_on(tmp_path):
    model, _ = _saved(tmp_path)
    good = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(good.read_bytes()[:20])
    results = dict(classify_images(model, [bad, good], top_k=2))
    assert isinstance(results[bad], bigmodels.DataError) and str(bad) in str(results[bad])
    assert len(results[good]) == 2
