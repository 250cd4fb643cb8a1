"""bigmodels.compress.fuse: batch-norm folding (exactness, which pairs fold and which stay), optimize_for_inference,
compile_model, and the peak-FLOPs / MFU lookups."""

from __future__ import annotations

import copy
import doctest
import logging
import os

import pytest
import torch
from torch import nn

import bigmodels
from bigmodels.bench.flops import PEAK_FLOPS, mfu, peak_flops
from bigmodels.compress import fuse
from bigmodels.compress.fuse import compile_model, fold_batchnorm, optimize_for_inference
from bigmodels.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

_BN = nn.modules.batchnorm._BatchNorm


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so a wrong fold shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                c = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(c, generator=g))
                    m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
    return model


def norms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BN)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------ folding: exactness

VISION = [  # (preset, overrides, input shape)
    ("resnet_mini", {}, (2, 1, 8, 8)),  # basic blocks, downsample = Sequential(conv1x1, bn)
    ("resnet_mini", {"block": "bottleneck"}, (2, 1, 8, 8)),
    ("googlenet_mini", {"aux_logits": True}, (2, 1, 8, 8)),  # BasicConv2d conv + bn, aux heads
    ("cnn_small", {}, (2, 1, 8, 8)),
    ("cnn_mnist", {}, (2, 1, 28, 28)),  # two convs per stage
]


@pytest.mark.parametrize(
    "name,overrides,shape", VISION, ids=["resnet_mini", "resnet_bottleneck", "googlenet_aux", "cnn_small", "cnn_mnist"]
)
def test_fold_matches_unfolded_model_and_removes_every_norm(name, overrides, shape):
    torch.manual_seed(0)
    model = randomise_norms(bigmodels.create_model(name, **overrides).double().eval())
    reference = copy.deepcopy(model)
    n_norms = len(norms(model))
    assert n_norms >= 2
    x = torch.randn(*shape, dtype=torch.float64)

    folded = fold_batchnorm(model)

    assert folded is model and type(folded) is type(reference)  # same object, same class
    assert norms(folded) == []  # every norm here follows a conv
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) >= n_norms
    with torch.no_grad():
        assert rel_err(folded(x), reference(x)) < 1e-10
        assert rel_err(folded.forward_features(x), reference.forward_features(x)) < 1e-10
        if overrides.get("aux_logits"):  # heads the forward never calls fold through their own forward
            for got, want in zip(folded.forward_aux(x), reference.forward_aux(x), strict=True):
                assert rel_err(got, want) < 1e-10


def test_fold_in_float32_is_close_and_keeps_names_and_methods():
    torch.manual_seed(0)
    model = randomise_norms(bigmodels.create_model("resnet_mini")).eval()
    reference = copy.deepcopy(model)
    x = torch.randn(4, 1, 8, 8)
    fold_batchnorm(model)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-5
    assert isinstance(model.layer2[0].downsample[1], nn.Identity) and model.layer2[0].downsample[0].bias is not None
    assert isinstance(model.bn1, nn.Identity) and not model.bn1.training
    assert "bn1.running_mean" not in model.state_dict() and "conv1.bias" in model.state_dict()
    assert fold_batchnorm(model) is model  # a second fold finds nothing to do


def test_fold_refuses_a_model_in_training_mode():
    model = bigmodels.create_model("resnet_mini")
    with pytest.raises(ConfigError, match=r"model\.eval\(\)"):
        fold_batchnorm(model)
    assert len(norms(model)) == 12  # untouched


def test_fold_refuses_a_norm_left_in_training_mode():
    model = bigmodels.create_model("cnn_small").eval()
    model.stages[1][1].train()
    with pytest.raises(ConfigError, match=r"stages\.1\.1 is in training mode"):
        fold_batchnorm(model)


def test_fold_channels_last_keeps_the_layout_and_the_outputs():
    torch.manual_seed(0)
    model = randomise_norms(bigmodels.create_model("resnet_mini")).double().eval()
    model.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    fold_batchnorm(model)
    assert norms(model) == []
    assert model.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-10


def test_fold_bfloat16_weights_compute_in_float32_and_round_once():
    torch.manual_seed(0)
    low = randomise_norms(bigmodels.create_model("cnn_small")).to(torch.bfloat16).eval()
    high = copy.deepcopy(low).float()  # the same bf16 values, exactly, in float32
    fold_batchnorm(low)
    fold_batchnorm(high)
    for (name, p_low), (_, p_high) in zip(low.named_parameters(), high.named_parameters(), strict=True):
        assert p_low.dtype == torch.bfloat16, name
        assert torch.equal(p_low, p_high.to(torch.bfloat16)), name  # one rounding, from the float32 result
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert rel_err(low(x.bfloat16()).float(), high(x)) < 3e-2  # bf16 arithmetic in the forward itself


class _Mixed(nn.Module):
    """Pairs that fold (affine=False, Linear -> BatchNorm1d, conv with a bias) and pairs that must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # has a bias
        self.bn = nn.BatchNorm2d(4, affine=False)  # folds: gamma = 1, beta = 0
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4, track_running_stats=False)  # stays: normalises with batch statistics
        self.conv3 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4)  # stays: conv3's output is also read by the residual
        self.bn_in = nn.BatchNorm2d(4)  # stays: follows an addition, not a layer
        self.fc = nn.Linear(4, 6)
        self.bn4 = nn.BatchNorm1d(6)  # folds into fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.bn2(self.conv2(x))
        y = self.conv3(x)
        x = self.bn_in(self.bn3(y) + y)
        return self.bn4(self.fc(x.mean((2, 3))))  # (B, 6)


def test_fold_only_the_pairs_that_are_exact():
    torch.manual_seed(0)
    model = randomise_norms(_Mixed()).double().eval()
    reference = copy.deepcopy(model)
    fold_batchnorm(model)
    assert norms(model) == ["bn2", "bn3", "bn_in"]
    assert isinstance(model.bn, nn.Identity) and isinstance(model.bn4, nn.Identity)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-10


class _StdConv2d(nn.Conv2d):
    """Weight standardisation (Qiao et al. 2019): folding a norm into its weight would be undone by the forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)  # stays: conv is called twice
        self.std = _StdConv2d(2, 2, 1)
        self.bn2 = nn.BatchNorm2d(2)  # stays: the conv rewrites its forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x) + self.bn2(self.std(x))


def test_fold_leaves_reused_and_custom_layers(caplog):
    torch.manual_seed(0)
    model = randomise_norms(_Shared()).double().eval()
    reference = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="bigmodels.compress.fuse"):
        fold_batchnorm(model)
    assert norms(model) == ["bn", "bn2"]
    assert "called more than once" in caplog.text and "bn2 after std left as is" in caplog.text
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-12


class _Untraceable(nn.Module):
    """A value-dependent branch stops torch.fx at this level; the block below still traces on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if x.mean() > 0:  # depends on the values: cannot be traced
            x = -x
        return self.block(x)


def test_fold_traces_children_where_the_forward_does_not_trace(caplog):
    torch.manual_seed(0)
    model = randomise_norms(_Untraceable()).double().eval()
    reference = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="bigmodels.compress.fuse"):
        fold_batchnorm(model)
    assert norms(model) == ["bn"] and isinstance(model.block[1], nn.Identity)
    assert "bn left as is" in caplog.text and "could not be traced" in caplog.text
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-10


class _Checked(nn.Module):
    """A forward that validates its input's shape, with no config to infer that shape from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("expected (B, 3, H, W)")
        return self.bn(self.conv(x))


def test_fold_input_shape_lets_shape_checks_trace():
    assert norms(fold_batchnorm(_Checked().eval())) == ["bn"]  # cannot trace `x.dim() != 4` symbolically
    torch.manual_seed(0)
    model = randomise_norms(_Checked()).double().eval()
    reference = copy.deepcopy(model)
    fold_batchnorm(model, input_shape=(1, 3, 8, 8))
    assert norms(model) == []
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-10


def test_fold_does_not_leave_proxies_on_the_model():
    class Caching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.last = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.last = self.bn(self.conv(x))  # state written during the forward (and so during tracing)
            return self.last

    model = fold_batchnorm(Caching().eval())
    assert model.last is None and isinstance(model.bn, nn.Identity)


# ----------------------------------------------------------------------------------------- optimize_for_inference


def test_optimize_for_inference_folds_converts_and_casts():
    torch.manual_seed(0)
    model = randomise_norms(bigmodels.create_model("resnet_mini"))  # in training mode: it switches to eval
    reference = copy.deepcopy(model).eval()
    x = torch.randn(2, 1, 8, 8)

    out = optimize_for_inference(model, channels_last=True)
    assert out is model and not model.training and norms(model) == []
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-5

    cnn = optimize_for_inference(bigmodels.create_model("cnn_small"), dtype="bf16")  # on a CPU: no channels-last
    assert {p.dtype for p in cnn.parameters()} == {torch.bfloat16}
    assert cnn.stages[0][0].weight.is_contiguous() and norms(cnn) == []


def test_optimize_for_inference_checks_arguments_before_changing_the_model():
    model = bigmodels.create_model("cnn_small")
    with pytest.raises(ConfigError, match="max-autotune-no-cudagraphs"):
        optimize_for_inference(model, compile="fastest")
    with pytest.raises(ConfigError, match="dtype='int8'"):
        optimize_for_inference(model, dtype="int8")
    assert model.training and len(norms(model)) == 2  # untouched


# ------------------------------------------------------------------------------------------------- q/k/v packing


def test_fuse_exports_the_reversible_qkv_packing():
    from bigmodels.nn.attention import pack_qkv_, unpack_qkv_

    assert fuse.pack_qkv_ is pack_qkv_ and fuse.unpack_qkv_ is unpack_qkv_  # one implementation, in nn/
    assert {"pack_qkv_", "unpack_qkv_"} <= set(fuse.__all__)
    torch.manual_seed(0)
    model = bigmodels.create_model("bert_mini")
    reference = copy.deepcopy(model).eval()
    x = torch.randint(0, model.config.vocab_size, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    names = list(model.state_dict())
    assert fuse.pack_qkv_(optimize_for_inference(model)) == model.config.num_hidden_layers
    assert list(model.state_dict()) == names  # the reference names stay
    with torch.no_grad():
        for got, want in zip(model(x, attention_mask=mask), reference(x, attention_mask=mask), strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert fuse.unpack_qkv_(model) == model.config.num_hidden_layers and fuse.unpack_qkv_(model) == 0


# ------------------------------------------------------------------------------------------------- compile_model


def test_compile_model_rejects_an_unknown_mode_listing_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        compile_model(nn.Linear(2, 2), "turbo")
    assert "'turbo'" in str(err.value)
    assert all(mode in str(err.value) for mode in fuse.COMPILE_MODES)


def test_compile_model_passes_its_arguments_to_torch_compile(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.update(kw, model=model) or "compiled")
    model = nn.Linear(2, 2)
    assert compile_model(model, "max-autotune", dynamic=False, fullgraph=True) == "compiled"
    assert seen == dict(model=model, mode="max-autotune", dynamic=False, fullgraph=True, backend="inductor")
    assert optimize_for_inference(model, compile="reduce-overhead") == "compiled" and seen["mode"] == "reduce-overhead"


def test_compile_model_freeze_turns_inductor_freezing_on_during_each_call_only(monkeypatch):
    from torch._inductor import config

    seen = {}

    def fake_compile(model, **kw):  # a stand-in for torch.compile's module: records the setting at each call
        seen.update(kw)

        class Compiled(nn.Module):
            def forward(self, x):
                seen.setdefault("during", []).append(config.freezing)
                if x is None:
                    raise ValueError("a failed call")
                return model(x)

        return Compiled()

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = nn.Linear(2, 2)
    compiled = compile_model(model, "max-autotune-no-cudagraphs", freeze=True, fullgraph=True)
    assert seen == dict(mode="max-autotune-no-cudagraphs", dynamic=None, fullgraph=True, backend="inductor")
    before = config.freezing
    compiled(torch.zeros(1, 2))
    with pytest.raises(ValueError):
        compiled(None)
    assert seen["during"] == [True, True] and config.freezing is before  # restored, after a failure too
    copy.deepcopy(compiled)(torch.zeros(1, 2))  # the hooks are module-level functions: a copy keeps them
    assert seen["during"] == [True, True, True] and config.freezing is before
    optimize_for_inference(model, compile="default", freeze=True)(torch.zeros(1, 2))
    assert seen["during"][-1] is True and config.freezing is before


def test_compile_model_freeze_refuses_what_cannot_freeze():
    with pytest.raises(ConfigError, match="backend='eager' has none: use backend='inductor'"):
        compile_model(nn.Linear(2, 2), freeze=True, backend="eager")
    with pytest.raises(ConfigError, match=r"freeze='yes'\) must be True or False"):
        compile_model(nn.Linear(2, 2), freeze="yes")
    model = nn.Linear(2, 2).train()
    with pytest.raises(ConfigError, match="pass compile='default'"):
        optimize_for_inference(model, freeze=True)
    with pytest.raises(ConfigError, match=r"optimize_for_inference\(freeze=1\) must be True or False"):
        optimize_for_inference(model, compile="default", freeze=1)
    assert model.training  # refused before the model was changed


def test_compile_model_runs_the_captured_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    compiled = compile_model(model, backend="eager")  # TorchDynamo capture without Inductor: about a second
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("BIGMODELS_TEST_INDUCTOR"),
    reason="Inductor generates and builds C++ kernels (~11 s warm, ~20 s cold on 2 busy cores); "
    "set BIGMODELS_TEST_INDUCTOR=1 to run it",
)
def test_compile_model_with_inductor_on_cpu():
    torch.manual_seed(0)
    model = optimize_for_inference(randomise_norms(bigmodels.create_model("cnn_small")))
    compiled = compile_model(model, "default")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BIGMODELS_TEST_INDUCTOR"),
                    reason="Inductor generates and builds C++ kernels; set BIGMODELS_TEST_INDUCTOR=1 to run it")
def test_compile_model_freeze_on_cpu_matches_the_eager_model_and_packs_the_weights():
    torch.manual_seed(0)
    model = bigmodels.create_model("bert_mini", head="sequence_classification", num_labels=2).eval()
    compiled = compile_model(model, fullgraph=True, freeze=True)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.inference_mode(), torch.profiler.profile() as prof:
        torch.testing.assert_close(compiled(ids), model(ids), atol=1e-5, rtol=1e-5)
    if torch.backends.mkl.is_available():  # frozen float32 Linear layers run on MKL's packed GEMM
        assert "mkl::_mkl_linear" in {e.key for e in prof.key_averages()}


# ------------------------------------------------------------------------------------------------- peak FLOP/s


@pytest.fixture
def gpu_named(monkeypatch):
    """Pretend the CUDA device is called ``name``."""

    def set_name(name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    return set_name


@pytest.mark.parametrize("device_name,dtype,expected", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),  # SXM
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7e12),
    ("NVIDIA H100 80GB HBM3", torch.float32, 66.9e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA H200", torch.float16, 989e12),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),  # not the A10
    ("NVIDIA A100-PCIE-40GB", torch.float32, 19.5e12),
    ("NVIDIA A100 80GB PCIe", "tf32", 156e12),
    ("NVIDIA A10G", torch.bfloat16, 125e12),
    ("NVIDIA L4", torch.bfloat16, 121e12),
    ("NVIDIA L40S", torch.bfloat16, 362.05e12),  # not the L4
    ("NVIDIA GeForce RTX 3090", torch.bfloat16, None),  # not in the table
    ("NVIDIA A100-SXM4-80GB", "fp8", None),  # Ampere has no FP8 tensor cores
    ("NVIDIA H100 80GB HBM3", torch.float64, None),  # no entry for this dtype
])
def test_peak_flops_by_device_name(gpu_named, device_name, dtype, expected):
    gpu_named(device_name)
    assert peak_flops("cuda", dtype) == expected
    assert peak_flops(None, dtype) == expected  # the current device
    assert peak_flops(torch.device("cuda", 0), dtype) == expected


def test_peak_flops_is_none_on_a_cpu_and_without_a_gpu(gpu_named, monkeypatch):
    gpu_named("NVIDIA H100 80GB HBM3")
    assert peak_flops("cpu") is None and peak_flops(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert peak_flops() is None


def test_peak_flops_rejects_unknown_dtype_names_and_devices():
    with pytest.raises(ConfigError, match="'int4'"):
        peak_flops("cuda", "int4")
    with pytest.raises(ConfigError, match="not a torch device"):
        peak_flops("my-gpu")


def test_peak_flops_table_is_dense_and_consistent():
    for name, table in PEAK_FLOPS.items():
        assert table["bf16"] == table["fp16"], name  # the same tensor-core rate on every listed GPU
        assert table["fp32"] < table["tf32"] < table["bf16"], name  # CUDA-core FP32 < TF32 < 16-bit
        assert table.get("fp8", 2 * table["bf16"]) == pytest.approx(2 * table["bf16"], rel=0.02), name


def test_mfu_divides_by_the_peak(gpu_named):
    gpu_named("NVIDIA A100-SXM4-80GB")
    assert mfu(156e12, "cuda", torch.bfloat16) == pytest.approx(0.5)
    assert mfu(39e12, "cuda:0", "tf32") == pytest.approx(0.25)
    assert mfu(0.0, "cuda") == 0.0
    assert mfu(1e12, "cpu") is None
    gpu_named("Some Future GPU")
    assert mfu(1e12, "cuda") is None
    with pytest.raises(ConfigError, match="flops_per_second"):
        mfu(-1.0, "cuda")
    with pytest.raises(ConfigError, match="flops_per_second"):
        mfu(float("nan"), "cuda")


def test_docstring_examples_run():
    from bigmodels.bench import flops

    results = [doctest.testmod(module, optionflags=doctest.ELLIPSIS) for module in (fuse, flops)]
    assert sum(r.attempted for r in results) >= 8 and sum(r.failed for r in results) == 0
