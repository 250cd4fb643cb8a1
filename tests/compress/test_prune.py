"""Pruning (bigmodels.compress): magnitude zeros that stay, structured pruning that really changes shapes and
FLOPs, pruned models that save, load and fine-tune with their new shapes, the table and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from compress.test_quantize import accuracy, first, trained_digits_model
from torch import nn
from torch.nn.utils import parametrize

import bigmodels
from bigmodels.bench.measure import count_flops
from bigmodels.compress import prune_magnitude_, prune_structured_
from bigmodels.errors import ConfigError
from bigmodels.testing import call, example_inputs, tiny_model

pytest.importorskip("torch_pruning")

PRUNED_TOLERANCE = 0.03  # structured pruning at 0.3 + 60 fine-tuning steps: at most 3 points of digits accuracy


def test_magnitude_zeros_exactly_and_leaves_no_mask(tmp_path):
    model = tiny_model("bert-base")
    report = prune_magnitude_(model, 0.6)
    assert report.sparsity == pytest.approx(0.6, abs=1e-3)
    assert "do not speed up dense kernels" in report.note
    assert all(0 < v["sparsity"] < 1 for v in report.layers.values())
    assert not any(parametrize.is_parametrized(m) or m._forward_pre_hooks for m in model.modules())
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    assert loaded.info.meta["compress"]["magnitude"]["sparsity"] == report.sparsity
    assert float((loaded.layers[0].fc1.weight == 0).float().mean()) == report.layers["layers.0.fc1"]["sparsity"]


@pytest.mark.parametrize("name", ["resnet18", "cnn_keras"])
def test_structured_channels_change_shapes_flops_and_round_trip(name, tmp_path):
    model = tiny_model(name).eval()
    x = example_inputs(model)
    flops = count_flops(model, (x,))
    report = prune_structured_(model, 0.5)
    assert report.method == "depgraph" and report.channels
    assert report.params_after < 0.35 * report.params_before  # half the channels of both sides: ~1/4
    assert count_flops(model, (x,)) < 0.5 * flops  # the first conv keeps its 3 input channels
    assert call(model, x).shape[1] == model.config.num_classes  # the classifier keeps its outputs
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", ["bert-base", "gpt2", "transformer_base"])
def test_structured_heads_and_ffn_units_round_trip(name, tmp_path):
    model = tiny_model(name).eval()
    x = example_inputs(model)
    report = prune_structured_(model, 0.5)
    assert report.method == "transformer" and report.heads and report.ffn
    assert all(after == before // 2 for before, after in report.heads.values())
    assert all(after == before // 2 for before, after in report.ffn.values())
    layer = next(m for m in model.modules() if isinstance(m, bigmodels.nn.MultiHeadAttention))
    assert layer.num_heads == 1 and layer.out_proj.in_features == layer.head_dim
    with torch.no_grad():
        y = first(call(model, x))
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(first(call(loaded, x)), y)


def test_vit_heads_are_pruned_and_the_weakest_go_first(tmp_path):
    # ViT's attention keeps nn.MultiheadAttention's layout (stacked in_proj): it prunes its own heads
    torch.manual_seed(0)
    model = tiny_model("vit_mini").eval()
    x = example_inputs(model)
    flops = count_flops(model, (x,))
    weak = [1, 3]  # zero these heads of every layer: the smallest norm, so l2 must remove exactly them
    for block in model.encoder.layers:
        attn = block.self_attention
        nh, hs = attn.num_heads, attn.head_dim
        with torch.no_grad():
            for h in weak:
                for i in range(3):  # their q, k and v rows
                    rows = slice(i * nh * hs + h * hs, i * nh * hs + (h + 1) * hs)
                    attn.in_proj_weight[rows] = 0
                    attn.in_proj_bias[rows] = 0
                attn.out_proj.weight[:, h * hs:(h + 1) * hs] = 0
    with torch.no_grad():
        expected = model(x)  # the zeroed heads add nothing, so removing them changes nothing
    report = prune_structured_(model, 0.5, ffn_ratio=0.25)
    assert set(report.heads.values()) == {(4, 2)} and not report.kept
    attn = model.encoder.layers[0].self_attention
    assert attn.in_proj_weight.shape == (3 * 2 * attn.head_dim, model.config.hidden_dim)
    assert attn.out_proj.in_features == 2 * attn.head_dim
    assert count_flops(model, (x,)) < 0.8 * flops
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_heads_and_ffn_units_take_their_own_ratios():
    model = tiny_model("bert-base").eval()
    report = prune_structured_(model, 0.5, ffn_ratio=0.25)
    assert all(after == before // 2 for before, after in report.heads.values())
    assert all(after == before - before // 4 for before, after in report.ffn.values())
    with pytest.raises(ConfigError, match=r"ffn_ratio=1.0 must be a fraction in \(0, 1\)"):
        prune_structured_(tiny_model("bert-base"), 0.5, ffn_ratio=1.0)


def test_head_pruned_gpt_decodes_with_a_static_cache_as_with_a_growing_one():
    # pruned heads are gone from the layers, not from the config: the preallocated cache must follow the layers
    from bigmodels.infer.generate import generate

    torch.manual_seed(0)
    model = bigmodels.create_model("gpt_mini").eval()
    prune_structured_(model, 0.5, importance="l2")
    assert model.config.n_head == 4 and {b.attn.num_heads for b in model.blocks} == {2}
    cache = model.new_cache(batch_size=2, max_length=16, static=True)
    assert [k.shape[1] for k in cache.keys] == [b.attn.num_heads for b in model.blocks]
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    growing = generate(model, ids, max_new_tokens=6, temperature=0, cache="dynamic")
    static = generate(model, ids, max_new_tokens=6, temperature=0, cache="static")
    assert torch.equal(static, growing)


def test_taylor_importance_uses_gradients():
    model = tiny_model("bert-base")
    ids = example_inputs(model)
    batches = [ids]
    report = prune_structured_(model, 0.5, importance="taylor", batches=batches,
                               loss_fn=lambda m, b: first(call(m, b)).float().pow(2).mean())
    assert report.importance == "taylor" and report.ffn
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="importance='taylor' needs gradients"):
        prune_structured_(tiny_model("bert-base"), 0.5, importance="taylor")



def test_taylor_scores_add_each_batch_absolute_effect():
    """Taylor importance is |sum w * dL/dw| per batch, added over batches: two batches whose gradients are
    opposite (loss +L then -L on the same input) score each unit twice one batch's score, where summing the
    gradients first would score every unit zero."""
    from bigmodels.compress.prune import _ffn_pairs, _transformer_scores

    model = tiny_model("bert-base")
    ids = example_inputs(model)

    def loss_fn(m, sign):
        return sign * first(call(m, ids)).float().pow(2).mean()

    pairs = _ffn_pairs(model)
    once = _transformer_scores(model, pairs, "taylor", [1.0], loss_fn)
    twice = _transformer_scores(model, pairs, "taylor", [1.0, -1.0], loss_fn)
    assert set(once) == set(twice) and any("attn" in n or "attention" in n for n in once)
    for name in once:
        assert once[name].gt(0).all()
        torch.testing.assert_close(twice[name], 2 * once[name])
    assert all(p.grad is None for p in model.parameters())

def test_pruned_model_fine_tunes_from_init_and_keeps_accuracy(tmp_path):
    from bigmodels.train.trainer import build_model_for_data

    model, data, task = trained_digits_model()
    before = accuracy(model, data, task)
    prune_structured_(model, 0.3)
    bigmodels.save(model, tmp_path / "pruned")
    # init= a pruned directory: the trainer's fresh model takes the pruned shapes, then the weights
    tuned = build_model_for_data("mlp_small", {}, data, init=str(tmp_path / "pruned"))
    assert [p.shape for p in tuned.parameters()] == [p.shape for p in model.parameters()]
    assert tuned.info.meta["compress"]["structure"]
    from bigmodels.data.batching import fetch_batch

    x, y = fetch_batch(data.train, range(len(data.train)))
    x = data.eval_transform(x) if data.eval_transform else x
    opt = torch.optim.Adam(tuned.parameters(), lr=1e-3)
    tuned.train()
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(tuned(x), y).backward()
        opt.step()
    after = accuracy(tuned.eval(), data, task)
    assert after >= before - PRUNED_TOLERANCE, (before, after)
    bigmodels.save(tuned, tmp_path / "tuned")  # a checkpoint of the fine-tuned model keeps the pruned shapes
    assert accuracy(bigmodels.load(tmp_path / "tuned"), data, task) == after


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, True])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"must be a fraction in \(0, 1\)"):
        prune_structured_(tiny_model("resnet18"), ratio)
    with pytest.raises(ConfigError, match=r"sparsity=.* must be a fraction in \(0, 1\)"):
        prune_magnitude_(tiny_model("mlp_small"), ratio)


def test_other_bad_input():
    with pytest.raises(ConfigError, match="importance='fisher' is not known"):
        prune_structured_(tiny_model("resnet18"), 0.5, importance="fisher")
    with pytest.raises(ConfigError, match="no Linear or Conv weight"):
        prune_magnitude_(tiny_model("mlp_small"), 0.5, filter=["nothing.*"])


def test_compress_command_writes_model_and_tradeoff_table(tmp_path, capsys):
    from bigmodels.cli import main

    model, _, _ = trained_digits_model("cnn_small", steps=20)
    bigmodels.save(model, tmp_path / "cnn")
    out = tmp_path / "pruned"
    assert main(["compress", str(tmp_path / "cnn"), "--method", "structured", "--ratio", "0.5", "--data", "digits",
                 "--out", str(out), "--iters", "2", "--batch-size", "16"]) == 0
    table = json.loads((out / "compression.json").read_text())
    assert table["rows"]["params"]["ratio"] < 0.5 and table["rows"]["flops"]["ratio"] < 0.5
    assert set(table["metrics"]) >= {"accuracy", "loss"}
    assert (out / "compression.png").stat().st_size > 0
    assert "| parameters |" in (out / "compression.md").read_text()
    assert bigmodels.load(out).info.meta["compress"]["structure"]
    assert main(["compress", str(tmp_path / "cnn"), "--method", "int9", "--out", str(out)]) == 2
    assert "--method 'int9' is not known" in capsys.readouterr().err
    taylor = ["compress", str(tmp_path / "cnn"), "--method", "structured", "--importance", "taylor", "--data",
              "digits", "--out", str(tmp_path / "taylor"), "--iters", "1", "--batch-size", "16"]
    assert main(["compress", str(tmp_path / "cnn"), "--method", "int8", "--ffn-ratio", "0.5", "--out", str(out)]) == 2
    assert "--ffn-ratio sets the FFN units structured pruning removes" in capsys.readouterr().err
    assert main([*taylor, "--taylor-batches", "0"]) == 2
    assert "--taylor-batches 0 must be >= 1" in capsys.readouterr().err
    assert main([*taylor, "--taylor-batches", "3"]) == 0
    assert bigmodels.load(tmp_path / "taylor").info.meta["compress"]["pruning"][0]["importance"] == "taylor"


def test_compress_command_prunes_in_rounds_with_fine_tuning_between(tmp_path, capsys):
    # --steps N --finetune RECIPE: each round removes the same fraction of what is left, then trains the recipe
    from bigmodels.cli import main

    model, _, _ = trained_digits_model("cnn_small", steps=20)
    bigmodels.save(model, tmp_path / "cnn")
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text("model:\n  name: cnn_small\ndata:\n  name: digits\n  batch_size: 64\n"
                      "optim:\n  name: adamw\n  lr: 0.001\ntrain:\n  steps: 8\n  eval_every: 2\n")
    out = tmp_path / "pruned"
    args = ["compress", str(tmp_path / "cnn"), "--method", "structured", "--ratio", "0.5", "--data", "digits",
            "--out", str(out), "--iters", "1", "--batch-size", "16"]
    assert main([*args, "--steps", "2", "--finetune", f"{recipe} train.steps=4"]) == 0  # overrides: as in train
    table = json.loads((out / "compression.json").read_text())
    rounds = table["compression"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # each round: its pruned model, then a training run from it
        assert bigmodels.load(r["pruned"]).info.meta["compress"]["structure"]
        summary = json.loads((out / f"round_{r['round']}_finetuned" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["step"] == 4
    first_convs = [next(m for m in bigmodels.load(r["pruned"]).modules() if isinstance(m, nn.Conv2d))
                   for r in rounds]
    original = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).out_channels
    after = [c.out_channels for c in first_convs]
    assert original > after[0] > after[1] and abs(after[1] - original * 0.5) <= 1  # two cuts of ~29%: half
    final = bigmodels.load(out)
    tuned = bigmodels.load(rounds[-1]["finetuned"])
    for a, b in zip(final.state_dict().values(), tuned.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # OUT holds the last round's fine-tuned model
    assert table["rows"]["params"]["ratio"] < 0.5
    assert main([*args, "--steps", "2"]) == 2
    assert "--steps 2 without --finetune is one cut made in pieces" in capsys.readouterr().err
    assert main([*args, "--finetune", str(tmp_path / "missing.yaml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "cnn"), "--method", "int8", "--steps", "2", "--out", str(out)]) == 2
    assert "--method int8 has no rounds" in capsys.readouterr().err
