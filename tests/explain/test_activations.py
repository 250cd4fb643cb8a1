"""Activation analysis: dead and saturated units on a hand-built model, PCA projections, linear probes that find
a planted label (and not a random one), text models read block by block, and `bigmodels explain --method
activations`."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bigmodels.cli import main
from bigmodels.errors import ConfigError, DataError
from bigmodels.explain import activation_stats, layer_projections, linear_probes
from bigmodels.explain.activations import contract_layers, layer_representations
from bigmodels.models._contract import ModelInfo, set_model_info
from bigmodels.testing import tiny_model


@dataclass
class _Config:
    in_chans: int = 1
    img_size: int = 8
    num_classes: int = 2


class _Vision(nn.Module):
    """A vision-contract model over (B, 1, 1, 8) inputs whose intermediates are ``self.stages``' outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.head = nn.Linear(8, 2)
        set_model_info(self, ModelInfo("hand_built", "test", "image_classification"))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(8, num_classes)


class DeadAndSaturated(_Vision):
    """ReLU units 0-2 have a bias of -100 (dead); tanh units 0-1 a bias of +50 (saturated at +1)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.act1 = nn.Linear(8, 8), nn.ReLU()
        self.lin2, self.act2 = nn.Linear(8, 8), nn.Tanh()
        with torch.no_grad():
            self.lin1.weight.copy_(torch.eye(8))
            self.lin1.bias.zero_()
            self.lin1.bias[:3] = -100.0
            self.lin2.weight.copy_(0.1 * torch.eye(8))
            self.lin2.bias.zero_()
            self.lin2.bias[:2] = 50.0

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = self.act1(self.lin1(x.flatten(1)))  # (B, 8)
        return [h1, self.act2(self.lin2(h1))]


class PlantedLabel(_Vision):
    """Layer 0 is the input itself; layer 1 the input with feature 0 (where the label is planted) zeroed."""

    def __init__(self) -> None:
        super().__init__()
        self.keep = nn.Linear(8, 8, bias=False)
        self.drop = nn.Linear(8, 8, bias=False)
        with torch.no_grad():
            self.keep.weight.copy_(torch.eye(8))
            self.drop.weight.copy_(torch.diag(torch.tensor([0.0] + [1.0] * 7)))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.keep(x.flatten(1))
        return [h, self.drop(h)]


def _inputs(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 1, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- statistics


def test_dead_and_saturated_units_of_a_hand_built_model():
    model, x = DeadAndSaturated(), _inputs()
    relu, tanh = activation_stats(model, x)
    assert relu["layer"] == "intermediates[0]" and relu["activation"] == "relu" and tanh["activation"] == "tanh"
    assert relu["dead"] == pytest.approx(3 / 8) and relu["saturated"] is None
    assert tanh["saturated"] == pytest.approx(2 / 8) and tanh["dead"] is None
    with torch.no_grad():
        h1 = model.lin1(x.flatten(1)).relu()
    assert relu["mean"] == pytest.approx(float(h1.mean()), rel=1e-5)
    assert relu["std"] == pytest.approx(float(h1.std()), rel=1e-4)
    assert relu["units"] == 8 and relu["shape"] == "8" and relu["min"] == 0.0


def test_named_modules_and_batches_read_the_same():
    model, x = DeadAndSaturated(), _inputs()
    whole = activation_stats(model, x)
    by_name = activation_stats(model, [x[:20], x[20:]], layers=["act1", "act2"])  # two batches, forward hooks
    assert [r["layer"] for r in by_name] == ["act1", "act2"]
    for a, b in zip(whole, by_name, strict=True):
        for key in ("mean", "std", "min", "max", "dead", "saturated"):
            assert a[key] == (None if b[key] is None else pytest.approx(b[key], rel=1e-5)), key
    assert [r["layer"] for r in activation_stats(model, x, layers="activations")] == ["act1", "act2"]


def test_a_stated_threshold_counts_saturation_of_unbounded_outputs():
    model, x = DeadAndSaturated(), _inputs()
    (row,) = activation_stats(model, x, layers=["lin1"], threshold=50.0)  # units 0-2 sit near -100
    assert row["activation"] == "-" and row["dead"] is None and row["saturated"] == pytest.approx(3 / 8)
    (plain,) = activation_stats(model, x, layers=["lin1"])
    assert plain["saturated"] is None


def test_bad_layers_are_named():
    model = DeadAndSaturated()
    with pytest.raises(ConfigError, match="not modules"):
        activation_stats(model, _inputs(), layers=["nope"])
    with pytest.raises(DataError, match="no inputs"):
        activation_stats(model, [])


def test_text_models_are_read_block_by_block_and_skip_padding():
    torch.manual_seed(0)
    model = tiny_model("bert_mini").eval()
    assert contract_layers(model) == ["layers.0", "layers.1"]
    assert contract_layers(tiny_model("gpt_mini")) == [f"blocks.{i}" for i in range(4)]
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 8, 9, 10, 11, 12, 3]])
    mask = (ids != 0).long()
    reps = layer_representations(model, {"input_ids": ids, "attention_mask": mask})
    alone = layer_representations(model, ids[:1, :5])
    for name in ("layers.0", "layers.1"):
        assert reps[name].shape == (2, model.config.hidden_size)
        assert torch.allclose(reps[name][0], alone[name][0], atol=1e-5)  # padding changes nothing
    rows = activation_stats(model, {"input_ids": ids, "attention_mask": mask})
    assert [r["layer"] for r in rows] == ["layers.0", "layers.1"]


# ---------------------------------------------------------------------------------------------- projections, probes


def test_pca_projections_per_layer():
    x = _inputs(60)
    labels = (x.flatten(1)[:, 0] > 0).long()
    p = layer_projections(PlantedLabel(), x, labels, class_names=["neg", "pos"])
    assert list(p.points) == ["intermediates[0]", "intermediates[1]"]
    assert all(v.shape == (60, 2) for v in p.points.values())
    assert all(0 < v <= 1 for v in p.explained.values())
    assert p.png.startswith(b"\x89PNG")


def test_a_probe_reads_the_planted_label_and_not_a_random_one():
    x = _inputs(240, seed=1)
    planted = (x.flatten(1)[:, 0] > 0).long()
    rows = linear_probes(PlantedLabel(), x, planted)
    assert rows[0]["test_accuracy"] >= 0.95  # the label is feature 0 of layer 0
    assert rows[1]["test_accuracy"] <= 0.7  # layer 1 zeroes it: chance
    assert rows[0]["chance"] < 0.7 and rows[0]["dim"] == 8
    control = torch.randint(0, 2, (240,), generator=torch.Generator().manual_seed(2))
    assert linear_probes(PlantedLabel(), x, control)[0]["test_accuracy"] <= 0.7
    with pytest.raises(DataError, match="labels"):
        linear_probes(PlantedLabel(), x, planted[:10])


# ---------------------------------------------------------------------------------------------- the command


def test_explain_activations_on_a_data_set_writes_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", "mlp_small", "digits", "--method", "activations", "--examples", "120",
                 "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Per-layer statistics" in page and "Linear probes" in page and "intermediates[0]" in page
    assert page.count("data:image/png;base64,") == 1 and "http" not in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples"] == 120 and len(summary["probes"]) == len(summary["stats"]) == 2
    assert "probe accuracy" in capsys.readouterr().out


def test_explain_activations_on_a_text_file(tmp_path):
    vocab = tmp_path / "tok" / "vocab.txt"  # a directory with a WordPiece vocab.txt is a tokenizer
    vocab.parent.mkdir()
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]) + "\n")
    texts = tmp_path / "texts.tsv"
    texts.write_text("".join(f"{'pos' if i % 2 else 'neg'}\t{'very ' * (i % 3)}{'good' if i % 2 else 'bad'} film\n"
                             for i in range(24)))
    out = tmp_path / "out"
    assert main(["explain", "bert_mini", str(texts), "--method", "activations", "--tokenizer", str(vocab.parent),
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == ["neg", "pos"] and summary["examples"] == 24
    assert [r["layer"] for r in summary["stats"]] == [f"layers.{i}" for i in range(4)]  # bert_mini's 4 blocks
    assert "Linear probes" in (out / "report.html").read_text()
