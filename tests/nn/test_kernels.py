"""bigmodels.nn.kernels: each CPU operator against the arithmetic it stands for (the int8 product against its
documented quantization, the attention against PyTorch's, argmax against torch.argmax), where the library and the
decoding steps use them, and the fallback where they cannot be built."""

import logging

import pytest
import torch
from torch import nn

import bigmodels
from bigmodels.compress.quantize import Int8DynamicLinear
from bigmodels.infer.sampling import sample_next_token
from bigmodels.nn import kernels

needs_kernel = pytest.mark.skipif(not kernels.available(),
                                  reason="bigmodels_cpu is not built here (no AVX-512 VNNI or no C++ compiler)")


def documented(x: torch.Tensor, layer: Int8DynamicLinear) -> torch.Tensor:
    """The kernel's arithmetic in float64: each row to uint8 over its range including 0, then the int8 product."""
    lo, hi = x.amin(1, keepdim=True).clamp(max=0), x.amax(1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255).masked_fill(hi == lo, 1.0)
    zero = torch.round(-lo / scale).clamp(0, 255)
    q = (torch.round(x / scale) + zero).clamp(0, 255) - zero
    y = (q.double() @ layer.weight.double().t()) * scale.double() * layer.weight_scale.double()
    return y if layer.bias is None else y + layer.bias.double()


def test_pack_int8_tiles_rows_and_groups_of_four_inputs():
    torch.manual_seed(0)
    w = torch.randint(-127, 128, (70, 9), dtype=torch.int8)
    packed, sums = kernels.pack_int8(w)
    assert packed.shape == (2, 16, 64, 4) and sums.shape == (128,)  # inputs padded to 64 (an AMX tile's row)
    # tile t, group g, row r, lane j holds W[64 t + r, 4 g + j]; padding is zero
    unpacked = packed.permute(0, 2, 1, 3).reshape(128, 64)
    assert torch.equal(unpacked[:70, :9], w) and not unpacked[70:].any() and not unpacked[:, 9:].any()
    assert torch.equal(sums[:70], w.sum(1, dtype=torch.int32))


@needs_kernel
@pytest.mark.parametrize("out_features,in_features", [(50, 7), (64, 64), (130, 260), (200, 1000)])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_computes_the_documented_int8_arithmetic(out_features, in_features, bias):
    torch.manual_seed(out_features + in_features)
    layer = Int8DynamicLinear.from_linear(nn.Linear(in_features, out_features, bias=bias))
    for rows in (1, 3, 4, 5, 16, 17, 40):  # VNNI at one row, AMX tiles above (blocks of 16) where the CPU has them
        x = torch.randn(rows, in_features) * 3
        x[:, 0] += 5  # a row whose range is not centred on 0: the zero point matters
        y = torch.ops.bigmodels_cpu.int8_linear(x, *layer._vnni, layer.weight_scale, layer.bias, in_features)
        ref = documented(x, layer)
        assert y.shape == (rows, out_features) and y.dtype == torch.float32
        assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@needs_kernel
def test_kernel_handles_rows_of_zeros_and_all_positive_rows():
    torch.manual_seed(0)
    layer = Int8DynamicLinear.from_linear(nn.Linear(32, 20))
    x = torch.stack([torch.zeros(32), torch.rand(32) + 1, -torch.rand(32) - 1])
    y = torch.ops.bigmodels_cpu.int8_linear(x, *layer._vnni, layer.weight_scale, layer.bias, 32)
    assert torch.allclose(y[0], layer.bias)  # zero input: the bias exactly
    assert (y.double() - documented(x, layer)).abs().max() < 1e-5 * y.abs().max()


@needs_kernel
@pytest.mark.parametrize("rows,out_features", [(3, 1000), (100, 50), (70, 200)])
def test_kernel_gives_the_same_bits_on_one_and_two_threads(rows, out_features):
    # few output tiles and many rows: the rows are shared among the threads too (AMX), each output still one sum
    torch.manual_seed(0)
    layer = Int8DynamicLinear.from_linear(nn.Linear(96, out_features))
    layer._kernel_rows = None  # every call on the kernel, whatever this CPU's limit
    x = torch.randn(rows, 96)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(2)
        two = layer(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each output is one thread's sum, in one order
    assert torch.allclose(one.double(), documented(x, layer), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_kernel_rejects_inputs_that_do_not_match_the_packed_matrix():
    layer = Int8DynamicLinear.from_linear(nn.Linear(16, 8))
    with pytest.raises(RuntimeError, match="x has 24 features, the layer 16"):
        torch.ops.bigmodels_cpu.int8_linear(torch.randn(2, 24), *layer._vnni, layer.weight_scale, layer.bias, 16)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.bigmodels_cpu.int8_linear(torch.randn(2, 16).double(), *layer._vnni, layer.weight_scale, None, 16)


@needs_kernel
def test_int8_layer_runs_few_rows_on_the_kernel_and_many_on_pytorchs(monkeypatch):
    import bigmodels.compress.quantize as q

    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    layer = Int8DynamicLinear.from_linear(linear)
    limit = Int8DynamicLinear.kernel_rows()
    assert limit == (None if q._cpu_has_amx_int8() else 32)  # AMX: every call on the kernel
    if limit is None:
        large = torch.randn(600, 128)
        with torch.no_grad():
            assert torch.equal(layer(large), torch.ops.bigmodels_cpu.int8_linear(large, *layer._vnni,
                                                                                 layer.weight_scale, layer.bias, 128))
        limit = 24
        monkeypatch.setattr(layer, "_kernel_rows", limit)  # a limit, as on CPUs without AMX
    few, many = torch.randn(limit, 128), torch.randn(limit + 1, 128)
    with torch.no_grad():
        assert torch.equal(layer(few), torch.ops.bigmodels_cpu.int8_linear(few, *layer._vnni, layer.weight_scale,
                                                                           layer.bias, 128))
        assert not torch.equal(layer(many), torch.ops.bigmodels_cpu.int8_linear(many, *layer._vnni,
                                                                                layer.weight_scale, layer.bias, 128))
        # either path stays close to fp32; ours (a scale per row) closer than PyTorch's (one for the call)
        for x, tolerance in ((few[:1], 0.01), (few, 0.01), (many, 0.02)):
            assert (layer(x) - linear(x)).norm() / linear(x).norm() < tolerance
        monkeypatch.setattr(layer, "_kernel_rows", 0)  # the limit this layer read from its class when packed
        assert not torch.equal(layer(few), torch.ops.bigmodels_cpu.int8_linear(few, *layer._vnni,
                                                                               layer.weight_scale, layer.bias, 128))
    clone = Int8DynamicLinear.from_linear(nn.Linear(128, 96))
    clone.load_state_dict(layer.state_dict())  # repacked from the loaded weights
    assert torch.equal(clone._vnni[0], layer._vnni[0]) and torch.equal(clone._vnni[1], layer._vnni[1])
    with torch.no_grad():
        assert torch.equal(clone(few[:2]), torch.ops.bigmodels_cpu.int8_linear(few[:2], *layer._vnni,
                                                                              layer.weight_scale, layer.bias, 128))


@needs_kernel
def test_compiled_int8_decoding_step_gives_the_eager_steps_tokens():
    from bigmodels.compress.layout import prepare_for_cpu_decoding
    from bigmodels.infer.generate import CPU_COMPILE_OPTIONS, Decoder, generate

    torch.manual_seed(0)
    model = prepare_for_cpu_decoding(bigmodels.create_model("gpt_mini").eval(), int8=True)
    prompt = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.inference_mode():
        eager = generate(model, prompt, max_new_tokens=12, temperature=0, cache="static")
        compiled = generate(model, prompt, max_new_tokens=12, temperature=0, cache="static", compile=True,
                            decoder=Decoder(model, compile_options=CPU_COMPILE_OPTIONS))
    assert torch.equal(eager, compiled)


def test_kernel_is_not_used_when_switched_off_or_unbuildable(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    assert kernels._load() == f"{kernels.DISABLE_ENV}=0"
    monkeypatch.delenv(kernels.DISABLE_ENV)
    monkeypatch.setattr(kernels, "_cpu_has_avx512_vnni", lambda: False)
    assert kernels._load() == "this CPU has no AVX-512 VNNI"
    monkeypatch.setattr(kernels, "_cpu_has_avx512_vnni", lambda: True)
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    assert "no C++ compiler" in kernels._load()
    # a compiler that fails: a clear error with its output, and no library left behind
    monkeypatch.setenv(kernels.DIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="failed"):
        kernels._build("false")
    assert list(tmp_path.iterdir()) == []
    # available() logs the reason once and says False; the layer then runs on PyTorch's kernels alone
    monkeypatch.setattr(kernels, "_state", None)
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    with caplog.at_level(logging.INFO, logger="bigmodels.nn.kernels"):
        assert kernels.available() is False
    assert "no C++ compiler" in caplog.text
    layer = Int8DynamicLinear.from_linear(nn.Linear(16, 8))
    assert layer._vnni is None and layer(torch.randn(1, 16)).shape == (1, 8)
    assert sample_next_token(torch.tensor([[0.0, 3.0, 1.0]]), temperature=0).tolist() == [[1]]


def reference_attention(q, k, v, mask):
    w = (q.double() @ k.double().transpose(-1, -2)) / q.size(-1) ** 0.5
    if mask is not None:
        w = w + mask.double()
    return (w.softmax(-1) @ v.double()).float()


@needs_kernel
@pytest.mark.parametrize("heads,keys,dim", [(3, 1, 64), (12, 128, 64), (2, 37, 20)])
def test_one_query_attention_matches_softmax_attention(heads, keys, dim):
    torch.manual_seed(keys)
    q = torch.randn(2, 1, heads, dim).transpose(1, 2)  # (B, H, 1, D) as the heads come: a strided view
    k, v = torch.randn(2, heads, keys, dim), torch.randn(2, heads, keys, dim)
    rows = torch.zeros(2, 1, 1, keys)
    rows[0, ..., keys // 2 + 1:] = float("-inf")  # the slots a static cache has not written yet
    for mask in (None, rows, rows[:1]):
        out = torch.ops.bigmodels_cpu.one_query_attention(q, k, v, mask, 1 / dim ** 0.5)
        assert out.shape == (2, heads, 1, dim)
        assert torch.allclose(out, reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_attention_takes_the_kernel_for_one_query_without_gradients_only():
    from bigmodels.nn import scaled_dot_product_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 4, 9, 16), torch.randn(1, 4, 9, 16)
    mask = torch.zeros(1, 1, 1, 9)
    mask[..., 7:] = float("-inf")
    kernel = torch.ops.bigmodels_cpu.one_query_attention(q, k, v, mask, 0.25)
    with torch.no_grad():
        assert torch.equal(scaled_dot_product_attention(q, k, v, mask)[0], kernel)
    # gradients, two queries, float64: PyTorch's path, the same numbers
    qg = q.clone().requires_grad_()
    out = scaled_dot_product_attention(qg, k, v, mask)[0]
    out.sum().backward()
    assert qg.grad is not None and torch.allclose(out, kernel, atol=1e-6)
    two = scaled_dot_product_attention(q.expand(1, 4, 2, 16), k, v, mask)[0]
    assert torch.allclose(two[:, :, :1], kernel, atol=1e-6)
    assert torch.allclose(scaled_dot_product_attention(q.double(), k.double(), v.double(), mask)[0].float(),
                          kernel, atol=1e-6)


@needs_kernel
def test_argmax_is_torch_argmax_ties_nan_and_infinities_included():
    torch.manual_seed(0)
    for width in (1, 15, 16, 17, 50257):
        x = torch.randn(5, width)
        assert torch.equal(torch.ops.bigmodels_cpu.argmax(x), x.argmax(-1, keepdim=True))
    x = torch.zeros(6, 40)
    x[1, [3, 30]] = 2.0  # a tie: the first
    x[2, 33] = float("nan")  # NaN counts as the largest
    x[2, 35] = float("inf")
    x[3] = float("-inf")
    x[4, [5, 20]] = float("inf")
    x[5, [8, 36]] = float("nan")
    assert torch.equal(torch.ops.bigmodels_cpu.argmax(x), x.argmax(-1, keepdim=True))
    assert torch.ops.bigmodels_cpu.argmax(x).view(-1).tolist() == [0, 3, 33, 0, 5, 8]
    assert torch.equal(sample_next_token(x[1:2], temperature=0), torch.tensor([[3]]))


@needs_kernel
def test_decoding_gives_the_same_tokens_with_and_without_the_kernels(monkeypatch):
    from bigmodels.infer.generate import generate

    torch.manual_seed(0)
    model = bigmodels.create_model("gpt_mini").eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    with torch.inference_mode():
        runs = [generate(model, prompt, max_new_tokens=10, temperature=0, cache=cache)
                for cache in ("dynamic", "static")]
        monkeypatch.setattr(kernels, "_state", False)  # PyTorch's attention and argmax
        assert not kernels.available()
        for cache, ours in zip(("dynamic", "static"), runs, strict=True):
            assert torch.equal(generate(model, prompt, max_new_tokens=10, temperature=0, cache=cache), ours)


def test_available_builds_and_registers_once_when_threads_ask_together(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    calls = []

    def slow_load():
        calls.append(1)
        return "stand-in reason"

    monkeypatch.setattr(kernels, "_state", None)
    monkeypatch.setattr(kernels, "_load", slow_load)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: kernels.available(), range(32)))
    assert answers == [False] * 32 and calls == [1]


@needs_kernel
def test_int8_layer_keeps_the_kernel_to_32_rows_on_cpus_without_amx(monkeypatch):
    import bigmodels.compress.quantize as q

    torch.manual_seed(0)
    monkeypatch.setattr(q, "_cpu_has_amx_int8", lambda: False)  # the VNNI loop alone: measured to 32 rows
    layer = Int8DynamicLinear.from_linear(nn.Linear(64, 48))
    inside, outside = torch.randn(Int8DynamicLinear.kernel_max_rows_without_amx, 64), torch.randn(33, 64)
    with torch.no_grad():
        ours = torch.ops.bigmodels_cpu.int8_linear
        assert torch.equal(layer(inside), ours(inside, *layer._vnni, layer.weight_scale, layer.bias, 64))
        assert not torch.equal(layer(outside), ours(outside, *layer._vnni, layer.weight_scale, layer.bias, 64))


@needs_kernel
@pytest.mark.parametrize("rows,in_features,out_features", [(1, 768, 2304), (2, 7, 5), (3, 130, 33), (4, 257, 64),
                                                            (1, 64, 1), (2, 3, 17)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_f32_is_the_float64_product_to_float_rounding(rows, in_features, out_features, bias):
    torch.manual_seed(0)
    x, w = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    b = torch.randn(out_features) if bias else None
    ours = torch.ops.bigmodels_cpu.linear_f32(x, w.t().contiguous(), b)
    exact = x.double() @ w.double().t() + (b.double() if bias else 0)
    assert ours.shape == (rows, out_features) and ours.dtype == torch.float32
    assert torch.allclose(ours.double(), exact, rtol=0, atol=1e-6 * in_features ** 0.5 * 4)
    assert torch.equal(torch.ops.bigmodels_cpu.linear_f32(x, w.t().contiguous(), b), ours)  # the same bits again


@needs_kernel
def test_linear_f32_rejects_what_it_cannot_multiply():
    x, wt = torch.randn(2, 8), torch.randn(8, 5)
    with pytest.raises(RuntimeError, match="at most 4 rows"):
        torch.ops.bigmodels_cpu.linear_f32(torch.randn(5, 8), wt, None)
    with pytest.raises(RuntimeError, match="transpose must be a contiguous"):
        torch.ops.bigmodels_cpu.linear_f32(x, torch.randn(5, 8).t(), None)  # a row-major weight's .t()
    with pytest.raises(RuntimeError, match="transpose must be a contiguous"):
        torch.ops.bigmodels_cpu.linear_f32(torch.randn(2, 9), wt, None)
    with pytest.raises(RuntimeError, match="bad bias"):
        torch.ops.bigmodels_cpu.linear_f32(x, wt, torch.randn(4))


@needs_kernel
def test_packed_layer_runs_few_column_major_rows_on_linear_f32(monkeypatch):
    from bigmodels.compress.layout import PackedLinear, column_major_linears_

    torch.manual_seed(0)
    plain = nn.Linear(96, 40).eval()
    layer = PackedLinear(plain)
    calls = []
    real = torch.ops.bigmodels_cpu.linear_f32
    monkeypatch.setattr(torch.ops.bigmodels_cpu, "linear_f32", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        few = torch.randn(2, 1, 96)
        layer(few)  # row-major weight: oneDNN's packed copy
        assert calls == []
        column_major_linears_(plain)  # the same Parameter, now column-major
        assert not layer.weight.is_contiguous()
        assert torch.allclose(layer(few), plain(few), atol=1e-5) and calls == [(2, 96)]
        many = torch.randn(PackedLinear.kernel_max_rows + 1, 96)
        assert torch.allclose(layer(many), plain(many), atol=1e-5) and len(calls) == 1
        layer.activation = "gelu_tanh"
        assert torch.allclose(layer(few), nn.functional.gelu(plain(few), approximate="tanh"), atol=1e-5)
        assert len(calls) == 2
    layer.activation = None
    x = torch.randn(1, 96, requires_grad=True)
    layer(x).sum().backward()  # a gradient is wanted: PyTorch's product, which has one
    assert len(calls) == 2 and torch.allclose(x.grad, plain.weight.sum(0), atol=1e-5)


@needs_kernel
def test_compiled_fp32_decoding_on_linear_f32_gives_the_plain_models_tokens():
    from bigmodels.compress.layout import prepare_for_cpu_decoding
    from bigmodels.infer.generate import CPU_COMPILE_OPTIONS, Decoder, generate

    torch.manual_seed(0)
    model = bigmodels.create_model("gpt_mini").eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.inference_mode():
        plain = generate(model, prompt, max_new_tokens=8, temperature=0)
        prepare_for_cpu_decoding(model)
        eager = generate(model, prompt, max_new_tokens=8, temperature=0, cache="static")
        compiled = generate(model, prompt, max_new_tokens=8, temperature=0, cache="static", compile=True,
                            decoder=Decoder(model, compile_options=CPU_COMPILE_OPTIONS))
    assert torch.equal(eager, plain) and torch.equal(compiled, plain)


def _exact_argmax(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    logits = x.double() @ w.double().t() + (0 if b is None else b.double())
    return logits.argmax(-1, keepdim=True)


def test_screen_bounds_every_rows_float16_error_and_rounding():
    torch.manual_seed(0)
    w = torch.randn(300, 96) * 0.5
    qt, slack = kernels.screen(w, rows=257)
    assert qt.shape == (96, 257) and qt.dtype == torch.float16 and qt.is_contiguous()
    assert torch.equal(qt.t(), w[:257].half()) and slack.shape == (257,)
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(64, 96) * scale
        screened = x @ qt.float()  # float32 sums of the float16 weights
        err = (x.double() @ w[:257].double().t() - screened.double()).abs()
        assert bool((err <= x.double().norm(dim=1, keepdim=True) * slack.double()).all())
    with pytest.raises(ValueError, match="float matrix"):
        kernels.screen(torch.ones(4, dtype=torch.long))


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_screened_argmax_is_the_full_precision_argmax(rows, bias):
    torch.manual_seed(rows)
    V, K = 1000, 130
    w = torch.randn(V + 24, K) * 0.05  # padded rows beyond V are never picked
    w[V:] = 100.0
    b = torch.randn(V) * 0.1 if bias else None
    qt, slack = kernels.screen(w, rows=V)
    for layout in (w, w.t().contiguous().t()):  # row- and column-major weights
        for scale in (0.01, 1.0, 100.0):
            x = torch.randn(rows, K) * scale
            got = torch.ops.bigmodels_cpu.screened_argmax(x, qt, slack, layout, b)
            assert got.shape == (rows, 1) and got.dtype == torch.long
            assert torch.equal(got, _exact_argmax(x, w[:V], b))


@needs_kernel
def test_screened_argmax_separates_rows_that_float16_cannot():
    """Rows equal once rounded to float16, their logits apart by less than float16's error: the float32 weights
    decide, every time."""
    torch.manual_seed(0)
    K = 64
    base = torch.randn(K).half().float()  # exactly representable in float16
    w = base.repeat(6, 1)
    for i in range(6):
        w[i, i] += 1e-5 * (i + 1)  # far below float16's step (~1e-3 at |w| ~ 1): the same float16 row
    qt, slack = kernels.screen(w)
    assert bool((qt.t() == qt.t()[0]).all())
    for _ in range(50):
        x = torch.randn(2, K)
        assert torch.equal(torch.ops.bigmodels_cpu.screened_argmax(x, qt, slack, w, None), _exact_argmax(x, w))


@needs_kernel
def test_screened_argmax_gives_torch_argmax_over_non_finite_inputs_and_rejects_bad_ones():
    w = torch.randn(20, 8)
    qt, slack = kernels.screen(w)
    x = torch.randn(3, 8)
    x[1, 2] = float("nan")
    x[2, 0] = float("inf")
    got = torch.ops.bigmodels_cpu.screened_argmax(x, qt, slack, w, None)
    assert torch.equal(got, (x @ w.t()).argmax(-1, keepdim=True))
    with pytest.raises(RuntimeError, match="rows <= 4"):
        torch.ops.bigmodels_cpu.screened_argmax(torch.randn(5, 8), qt, slack, w, None)
    with pytest.raises(RuntimeError, match="float16 weight's transpose"):
        torch.ops.bigmodels_cpu.screened_argmax(x, qt.float(), slack, w, None)
    with pytest.raises(RuntimeError, match="slack must be"):
        torch.ops.bigmodels_cpu.screened_argmax(x, qt, slack[:5], w, None)
    with pytest.raises(RuntimeError, match="w must be the float32 weight"):
        torch.ops.bigmodels_cpu.screened_argmax(x, qt, slack, w[:10], None)
