"""Quantization (bigmodels.compress.quantize_): int8 dynamic on CPU, the recipe saved and re-applied on load, the
task metric kept on a trained model, and the errors a user can cause."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bigmodels
from bigmodels.compress import (
    Float8DynamicConfig,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8WeightOnlyConfig,
    quant_config,
    quantize_,
)
from bigmodels.errors import ConfigError
from bigmodels.testing import call, example_inputs, tiny_model

pytest.importorskip("torchao")

ACCURACY_TOLERANCE = 0.02  # int8 may cost the tiny digits model at most 2 points of validation accuracy


def trained_digits_model(name: str = "mlp_small", steps: int = 150, **args):
    """A registered model trained for a few full-batch Adam steps on the embedded digits (about a second)."""
    from bigmodels.data import build_data
    from bigmodels.tasks import get_task

    data = build_data("digits")
    torch.manual_seed(0)
    model = bigmodels.create_model(name, **{**data.model_args, **args})
    from bigmodels.data.batching import fetch_batch

    x, y = fetch_batch(data.train, range(len(data.train)))
    x = data.eval_transform(x) if data.eval_transform else x.float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), data, get_task(data.task, data.meta)


def first(out):
    """The first tensor of a model's output (an encoder with a pooler gives a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def accuracy(model, data, task) -> float:
    from bigmodels.evaluate import evaluate_model

    return evaluate_model(model, data.val, task, transform=data.eval_transform)["accuracy"]


@pytest.mark.parametrize("name", ["bert-base", "gpt2", "transformer_base"])
def test_int8_round_trips_save_and_load(name, tmp_path):
    model = tiny_model(name).eval()
    x = example_inputs(model)
    fp32 = tmp_path / "fp32"
    bigmodels.save(model, fp32)
    report = quantize_(model, Int8DynamicConfig())
    assert report.quantized and report.quantized_bytes < report.float_bytes / 3
    assert all(type(model.get_submodule(n).weight).__name__ == "Int8Tensor" for n in report.quantized)
    with torch.no_grad():
        y = first(call(model, x))
    bigmodels.save(model, tmp_path / "int8")
    loaded = bigmodels.load(tmp_path / "int8")
    assert loaded.info.meta["compress"]["quantization"]["modules"] == report.quantized
    with torch.no_grad():
        assert torch.equal(first(call(loaded, x)), y)
    # the int8 tensors themselves are written: the file shrinks by most of what the quantized weights lose (at
    # tiny sizes the per-tensor layout in the file's JSON header takes a share of it)
    saved = (tmp_path / "int8" / "model.safetensors").stat().st_size
    lost = report.float_bytes - report.quantized_bytes
    assert saved < (fp32 / "model.safetensors").stat().st_size - 0.5 * lost


def test_tied_output_layer_is_left_float():
    model = tiny_model("gpt2")
    report = quantize_(model, Int8DynamicConfig())
    assert "lm_head" in report.skipped and "tied" in report.skipped["lm_head"]
    assert model.lm_head.weight is model.wte.weight and type(model.wte.weight) is nn.Parameter


def test_filter_selects_layers_by_name():
    model = tiny_model("bert-base")
    report = quantize_(model, Int8DynamicConfig(filter="*.fc?"))
    assert report.quantized and all(n.endswith(("fc1", "fc2")) for n in report.quantized)
    assert type(model.layers[0].attn.q_proj.weight) is nn.Parameter


def test_quantized_model_keeps_accuracy_and_runs_through_pipeline(tmp_path):
    model, data, task = trained_digits_model()
    before = accuracy(model, data, task)
    assert before > 0.9
    quantize_(model, Int8DynamicConfig())
    after = accuracy(model, data, task)
    assert after >= before - ACCURACY_TOLERANCE, (before, after)
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    assert accuracy(loaded, data, task) == after
    image = data.val[0][0]
    top = bigmodels.pipeline("image-classification", loaded)(image)
    assert isinstance(top, list) and top and "label" in top[0]


def test_nothing_to_quantize_names_the_fix():
    with pytest.raises(ConfigError, match="no nn.Linear layer.*structured pruning"):
        quantize_(nn.Sequential(nn.Conv2d(3, 8, 3)), Int8DynamicConfig())
    with pytest.raises(ConfigError, match=r"no nn.Linear layer matches filter=\['decoder\.\*'\]"):
        quantize_(tiny_model("bert-base"), Int8DynamicConfig(filter="decoder.*"))
    model = nn.Sequential(nn.Linear(8, 8))
    quantize_(model, Int8DynamicConfig())
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_(model, Int8DynamicConfig())


@pytest.mark.parametrize("config", [Int8WeightOnlyConfig(), Int4WeightOnlyConfig(), Float8DynamicConfig()])
def test_gpu_only_configs_are_refused_on_cpu(config):
    with pytest.raises(ConfigError, match=f"{config.method} quantization .* CUDA GPUs only.*Int8DynamicConfig"):
        quantize_(nn.Sequential(nn.Linear(256, 256)), config)


def test_config_errors():
    with pytest.raises(ConfigError, match="method 'int2' is not known; choose one of int8"):
        quant_config("int2")
    with pytest.raises(ConfigError, match="has no option bits"):
        quant_config("int8", bits=4)
    with pytest.raises(ConfigError, match="group_size=100"):
        Int4WeightOnlyConfig(group_size=100)
    with pytest.raises(ConfigError, match="QuantConfig"):
        quantize_(nn.Linear(4, 4), "int8")


# ---------------------------------------------------------------------------------------------- decoding options


@pytest.mark.parametrize("kernel", ["torchao", "fbgemm"])
def test_output_layer_option_quantizes_a_tied_head_as_an_untied_copy(kernel, tmp_path):
    model = tiny_model("gpt2").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32 = model(ids)
    embedding = model.wte.weight.detach().clone()
    report = quantize_(model, Int8DynamicConfig(kernel=kernel, output_layer=True))
    assert "lm_head" in report.quantized and "lm_head" not in report.skipped
    assert model.lm_head.weight is not model.wte.weight
    assert model.lm_head.weight.dtype == torch.int8 or type(model.lm_head.weight).__name__ == "Int8Tensor"
    assert type(model.wte.weight) is nn.Parameter and torch.equal(model.wte.weight, embedding)  # lookup stays float
    with torch.no_grad():
        int8 = model(ids)
    assert 0 < ((int8 - fp32).norm() / fp32.norm()).item() < 0.05  # int8 rounding: close, not equal
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    assert loaded.info.meta["compress"]["quantization"]["options"]["output_layer"] is True
    assert loaded.lm_head.weight is not loaded.wte.weight
    with torch.no_grad():
        assert torch.equal(loaded(ids), int8)


def test_fbgemm_kernel_swaps_linears_for_int8_ones_that_round_trip(tmp_path):
    from bigmodels.compress.quantize import Int8DynamicLinear

    model = tiny_model("bert-base").eval()
    x = example_inputs(model)
    with torch.no_grad():
        y32 = first(call(model, x))
    report = quantize_(model, Int8DynamicConfig(kernel="fbgemm"))
    assert report.quantized and report.quantized_bytes < report.float_bytes / 3
    assert all(isinstance(model.get_submodule(n), Int8DynamicLinear) for n in report.quantized)
    with torch.no_grad():
        y8 = first(call(model, x))
        assert ((y8 - y32).norm() / y32.norm()).item() < 0.05
        import copy

        assert torch.equal(first(call(copy.deepcopy(model), x)), y8)  # the packed matrix is rebuilt on a copy
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    assert isinstance(loaded.get_submodule(report.quantized[0]), Int8DynamicLinear)
    with torch.no_grad():
        assert torch.equal(first(call(loaded, x)), y8)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_(model, Int8DynamicConfig(kernel="fbgemm"))  # nothing left but int8 layers and the tied head


def test_int8_greedy_decoding_stays_close_to_fp32():
    from bigmodels.infer.generate import generate

    torch.manual_seed(0)
    model = bigmodels.create_model("gpt2", n_layer=2, n_head=2, n_embd=64, vocab_size=256, block_size=64,
                                   tie_weights=False).eval()
    prompts = torch.randint(0, 256, (4, 8), generator=torch.Generator().manual_seed(1))
    fp32 = generate(model, prompts, max_new_tokens=8, temperature=0)
    quantize_(model, Int8DynamicConfig(kernel="fbgemm", output_layer=True))
    int8 = generate(model, prompts, max_new_tokens=8, temperature=0)
    assert int8.shape == fp32.shape and torch.equal(int8[:, :8], prompts)
    assert (int8[:, 8:] == fp32[:, 8:]).float().mean() >= 0.75


def test_int8_kernel_option_errors():
    with pytest.raises(ConfigError, match="kernel='onednn' is not valid; choose one of torchao, fbgemm"):
        Int8DynamicConfig(kernel="onednn")
    with pytest.raises(ConfigError, match="output_layer='yes' must be True or False"):
        quant_config("int8", output_layer="yes")
    with pytest.raises(ConfigError, match=r"is itself one: wrap it, e.g. nn.Sequential\(layer\)"):
        quantize_(nn.Linear(8, 8), Int8DynamicConfig(kernel="fbgemm"))
    assert quant_config("int8", kernel="fbgemm", output_layer=True).options()["kernel"] == "fbgemm"


def test_fbgemm_layer_quantizes_activations_to_8_bits_only_with_vnni(monkeypatch):
    # 7 bits (reduce_range) only where 16-bit intermediate sums could overflow (no VNNI); 8 bits halve the error
    import bigmodels.compress.quantize as q

    torch.manual_seed(0)
    monkeypatch.setattr(q.Int8DynamicLinear, "onednn_min_rows", 1 << 30)  # fbgemm at any size, AMX CPU or not
    monkeypatch.setattr(q.Int8DynamicLinear, "kernel_max_rows", 0)  # (test_kernels.py: our few-row kernel)
    monkeypatch.setattr(q.Int8DynamicLinear, "kernel_max_rows_without_amx", 0)
    linear = nn.Linear(256, 64)
    layer = q.Int8DynamicLinear.from_linear(linear)
    x = torch.randn(32, 256)
    x[:, 0] *= 20  # an outlier channel, as real encoders have: it sets the one scale of the call
    with torch.no_grad():
        ref = linear(x)
        errors = {}
        for vnni in (False, True):
            monkeypatch.setattr(q, "_cpu_has_vnni", lambda v=vnni: v)
            errors[vnni] = float((layer(x) - ref).abs().mean())
    assert errors[True] < 0.75 * errors[False]


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines,
                    reason="this PyTorch build has no oneDNN quantized engine")
def test_int8_layer_runs_large_calls_on_onednn_where_the_cpu_has_amx(monkeypatch):
    # AMX CPUs: a second packing for oneDNN, taken from onednn_min_rows rows on; fewer rows stay on fbgemm
    import copy

    import bigmodels.compress.quantize as q

    torch.manual_seed(0)
    linear = nn.Linear(96, 48)
    monkeypatch.setattr(q.Int8DynamicLinear, "kernel_max_rows", 0)  # PyTorch's kernels only (test_kernels.py: ours)
    monkeypatch.setattr(q.Int8DynamicLinear, "kernel_max_rows_without_amx", 0)
    monkeypatch.setattr(q, "_cpu_has_amx_int8", lambda: False)
    other = q.Int8DynamicLinear.from_linear(linear)
    with torch.no_grad():
        other(torch.randn(64, 96))
    assert other._packed_onednn is None and other._packed is not None  # other CPUs: fbgemm alone
    monkeypatch.setattr(q, "_cpu_has_amx_int8", lambda: True)  # oneDNN runs without AMX too, only slower
    layer = q.Int8DynamicLinear.from_linear(linear)
    assert layer._packed is None and layer._packed_onednn is None  # packed by the first call that needs it
    few, many = torch.randn(q.Int8DynamicLinear.onednn_min_rows - 1, 96), torch.randn(64, 96)
    vnni = q._cpu_has_vnni()
    with torch.no_grad():
        assert torch.equal(layer(few), torch.ops.quantized.linear_dynamic(few, layer.engine_packed(), not vnni))
        assert layer._packed_onednn is None
        onednn = torch.ops.quantized.linear_dynamic(many, layer.engine_packed(onednn=True), False)
        assert torch.equal(layer(many), onednn)
        fbgemm = torch.ops.quantized.linear_dynamic(many, layer.engine_packed(), not vnni)
        ref = linear(many)
        assert (onednn - fbgemm).norm() / ref.norm() < 0.01  # the same int8 arithmetic, another kernel
        assert (onednn - ref).norm() / ref.norm() < 0.02
        clone = copy.deepcopy(layer)  # a copy packs again, when called
        assert clone._packed_onednn is None and torch.equal(clone(many), onednn)
        loaded = q.Int8DynamicLinear.from_linear(nn.Linear(96, 48))
        loaded.load_state_dict(layer.state_dict())
        assert torch.equal(loaded(many), onednn)  # repacked from the loaded int8 weights


def test_compress_command_quantizes_a_cpu_model_with_the_x86_int8_kernel(tmp_path, capsys):
    # torchao's int8 is slower than fp32 on CPUs (cpu_micro.py int8_models): the command picks fbgemm there
    from bigmodels.cli import main
    from bigmodels.compress.quantize import Int8DynamicLinear, int8_kernel_for

    model, _, _ = trained_digits_model("mlp_small", steps=20)
    bigmodels.save(model, tmp_path / "mlp")
    out = tmp_path / "int8"
    assert int8_kernel_for(model) == "fbgemm"
    assert main(["compress", str(tmp_path / "mlp"), "--method", "int8", "--data", "digits", "--out", str(out),
                 "--iters", "2", "--batch-size", "16"]) == 0
    loaded = bigmodels.load(out)
    assert loaded.info.meta["compress"]["quantization"]["options"]["kernel"] == "fbgemm"
    assert any(isinstance(m, Int8DynamicLinear) for m in loaded.modules())
    table = json.loads((out / "compression.json").read_text())
    assert abs(table["metrics"]["accuracy"]["delta"]) <= 0.05
    assert main(["compress", str(tmp_path / "mlp"), "--method", "int8", "--kernel", "int4", "--out", str(out)]) == 2
    assert "--kernel 'int4' is not known; choose auto, torchao, fbgemm" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "mlp"), "--method", "magnitude", "--kernel", "fbgemm",
                 "--out", str(out)]) == 2
    assert "--method magnitude quantizes nothing: drop --kernel" in capsys.readouterr().err
