"""LoRA: adapters start at the base model, merge to the same outputs, save alone, and train alone in the trainer."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bigmodels
from bigmodels.compress.lora import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    LoRALinear,
    add_lora_,
    load_lora,
    lora_modules,
    merge_lora_,
    save_lora,
)
from bigmodels.config import resolve_run_config
from bigmodels.errors import ConfigError
from bigmodels.testing import call, example_inputs, tiny_model
from bigmodels.train import Trainer

TARGETS = ["q_proj", "v_proj", "fc*"]


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tiny_model("minilm-l6-h384", head="sequence_classification", num_labels=3).eval()


def randomise_adapters(model: nn.Module) -> None:
    """B starts at zero; give it values so that the adapters change the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_lora_starts_equal_to_the_base_and_freezes_all_but_adapters_and_head():
    model, x = tiny_classifier(), None
    x = example_inputs(model)
    before = call(model, x)
    report = add_lora_(model, TARGETS, rank=4, alpha=8, dropout=0.1, train_modules=["classifier"])
    assert torch.equal(call(model, x), before)  # B = 0: the adapted model is the base model
    assert report.wrapped == [f"layers.{i}.{n}" for i in range(2) for n in ("attn.q_proj", "attn.v_proj", "fc1",
                                                                           "fc2")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{w}.lora_{ab}" for w in report.wrapped for ab in "AB"} | {"classifier.weight",
                                                                                      "classifier.bias"}
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total == sum(p.numel() for p in model.parameters()) and 0 < report.fraction < 1
    assert "8 Linear layers + classifier in full" in str(report)
    # the state dict keeps the Linear's own names beside the adapters
    assert {"layers.0.attn.q_proj.weight", "layers.0.attn.q_proj.lora_A"} <= set(model.state_dict())


def test_merge_gives_the_adapted_outputs_with_plain_linear_layers():
    model = tiny_classifier()
    base_keys = set(model.state_dict())
    add_lora_(model, TARGETS, rank=4, alpha=8)
    randomise_adapters(model)
    x = example_inputs(model)
    adapted = call(model, x)
    assert not torch.allclose(adapted, call(tiny_classifier(), x))  # the adapters do change the model
    assert merge_lora_(model) == 8
    assert not lora_modules(model) and set(model.state_dict()) == base_keys
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("q_proj", "fc1")))
    torch.testing.assert_close(call(model, x), adapted, atol=1e-6, rtol=0)
    again = bigmodels.create_model("minilm-l6-h384", **{**model.config.__dict__})  # a plain model loads it strictly
    again.load_state_dict(model.state_dict())


def test_adapters_save_alone_and_load_onto_the_base(tmp_path):
    model = tiny_classifier()
    add_lora_(model, TARGETS, rank=2, alpha=4, train_modules=["classifier"])
    randomise_adapters(model)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # the trained head travels with the adapters
    x = example_inputs(model)
    expected = call(model, x)
    save_lora(model, tmp_path)
    record = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert record["rank"] == 2 and record["alpha"] == 4 and record["base_family"] == "bert"
    assert record["wrapped"][0] == "layers.0.attn.q_proj"
    from safetensors import safe_open

    with safe_open(str(tmp_path / ADAPTER_FILE), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118 (safe_open is no dict)
    assert keys == {f"{w}.lora_{ab}" for w in record["wrapped"] for ab in "AB"} | {"classifier.weight",
                                                                                    "classifier.bias"}
    base = tiny_classifier()  # the same base weights, fresh
    report = load_lora(base, tmp_path)
    assert report.wrapped == record["wrapped"]
    torch.testing.assert_close(call(base, x), expected, atol=0, rtol=0)
    # onto another family: refused, naming both
    with pytest.raises(ConfigError, match="adapts a bert model.*gpt"):
        load_lora(tiny_model("gpt2"), tmp_path)


def test_targets_that_match_no_linear_name_the_available_ones():
    model = tiny_classifier()
    with pytest.raises(ConfigError, match=r"match no Linear layer.*layers\.0\.attn\.q_proj.*classifier"):
        add_lora_(model, ["query"], rank=4)
    with pytest.raises(ConfigError, match="train_modules.*head.*match no module"):
        add_lora_(model, ["q_proj"], rank=4, train_modules=["head"])
    with pytest.raises(ConfigError, match="rank=0"):
        add_lora_(model, ["q_proj"], rank=0)
    assert not lora_modules(model) and all(p.requires_grad for p in model.parameters())  # nothing half-done


def test_lora_linear_is_the_low_rank_update():
    lin = LoRALinear(nn.Linear(6, 5), rank=3, alpha=6.0)
    with torch.no_grad():
        lin.lora_B.normal_()
    x = torch.randn(4, 6)
    want = x @ (lin.weight + 2.0 * lin.lora_B @ lin.lora_A).T + lin.bias  # alpha / r = 2
    torch.testing.assert_close(lin(x), want)


LORA_RUN = ["model=mlp_small", "data.name=digits", "train.device=cpu", "train.progress=false", "optim.lr=0.01",
            "lora.rank=4", "lora.targets=[layers.*]", "lora.train_modules=[fc]", "lora.dropout=0.1",
            "train.eval_every=2", "data.batch_size=32", "sched.name=constant"]


def test_training_with_lora_updates_only_adapters_and_head_and_saves_a_plain_model(tmp_path):
    torch.manual_seed(0)
    cfg = resolve_run_config(None, [*LORA_RUN, "train.steps=4", f"train.out_dir={tmp_path / 'a'}"])
    with Trainer(cfg) as t:
        start = {k: v.clone() for k, v in t.model.state_dict().items()}
        summary = t.fit()
        end = t.model.state_dict()
        x = torch.randn(3, 1, 8, 8)
        trained = t.model.eval()(x)
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed == {"mlp.layers.0.lora_A", "mlp.layers.0.lora_B", "mlp.layers.2.lora_A", "mlp.layers.2.lora_B",
                       "mlp.fc.weight", "mlp.fc.bias"}
    plain = bigmodels.load(summary["last_checkpoint"])  # a checkpoint is the merged, ordinary model
    assert not lora_modules(plain)
    torch.testing.assert_close(plain(x), trained, atol=1e-6, rtol=0)
    # resuming restores the adapters exactly: 2 steps + 2 resumed ones equal the 4 straight ones
    half = resolve_run_config(None, [*LORA_RUN, "train.steps=2", f"train.out_dir={tmp_path / 'b'}"])
    with Trainer(half) as t:
        t.fit()
    full = resolve_run_config(None, [*LORA_RUN, "train.steps=4", f"train.out_dir={tmp_path / 'b'}"])
    with Trainer(full) as t:
        assert t.step == 2
        t.fit()
        resumed = t.model.state_dict()
    for k in end:
        assert torch.equal(end[k], resumed[k]), k
    # a LoRA run resumed without its adapters is refused
    with pytest.raises(ConfigError, match="with LoRA adapters"):
        Trainer(resolve_run_config(None, [*LORA_RUN, "lora.rank=0", "train.steps=6",
                                          f"train.out_dir={tmp_path / 'b'}"]))
