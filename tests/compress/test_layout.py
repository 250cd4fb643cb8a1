"""column_major_linears_: Linear weights stored W^T-contiguous for one-token decoding, same results and files."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

import bigmodels
from bigmodels.compress.layout import column_major_linears_, row_major_linears_
from bigmodels.infer.generate import generate

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt():
    torch.manual_seed(0)
    return bigmodels.create_model("gpt2", n_layer=2, n_head=2, n_embd=64, vocab_size=300, block_size=64).eval()


def test_column_major_weights_keep_tokens_ties_and_files(tmp_path):
    model = tiny_gpt()
    prompts = torch.randint(0, 300, (3, 6), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(prompts)
    tokens = generate(model, prompts, max_new_tokens=12, temperature=0)
    assert column_major_linears_(model) == 9  # 4 per block + the tied output layer (the embedding's matrix)
    assert model.lm_head.weight is model.wte.weight and not model.lm_head.weight.is_contiguous()
    assert model.blocks[0].mlp.fc.weight.t().is_contiguous()
    with torch.no_grad():
        assert torch.allclose(model(prompts), logits, atol=1e-5)
    assert torch.equal(generate(model, prompts, max_new_tokens=12, temperature=0), tokens)
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    assert all(t.is_contiguous() for t in state.values())
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    assert torch.equal(generate(loaded, prompts, max_new_tokens=12, temperature=0), tokens)
    assert column_major_linears_(model) == 0  # already column-major
    assert row_major_linears_(model) == 9 and all(p.is_contiguous() for p in model.parameters())


def test_layers_that_are_not_plain_float_linears_are_left_alone():
    from bigmodels.compress.quantize import Int8DynamicConfig, quantize_

    model = tiny_gpt()
    quantize_(model, Int8DynamicConfig(kernel="fbgemm", filter="blocks.*"))
    assert column_major_linears_(model) == 1  # only the float output layer is left
    assert model.blocks[0].attn.qkv.weight.is_contiguous()


def test_docstring_examples_run():
    import doctest

    from bigmodels.compress import layout, quantize

    results = [doctest.testmod(module, optionflags=doctest.ELLIPSIS) for module in (layout, quantize)]
    assert sum(r.attempted for r in results) >= 12 and sum(r.failed for r in results) == 0


# ------------------------------------------------------------------------------------------------ oneDNN packing


def test_prepacked_linears_keep_outputs_tokens_ties_and_files(tmp_path):
    from bigmodels.compress.layout import PackedLinear, prepack_linears_, unpack_linears_

    model = tiny_gpt()
    prompts = torch.randint(0, 300, (3, 6), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    with torch.no_grad():
        logits = model(prompts)
    tokens = generate(model, prompts, max_new_tokens=12, temperature=0)
    static = generate(model, prompts, max_new_tokens=12, temperature=0, cache="static")
    assert prepack_linears_(model) == 9  # 4 per block + the tied output layer
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, PackedLinear) and model.lm_head.weight is model.wte.weight
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[k] for k, p in model.named_parameters())  # the same Parameter objects
    with torch.no_grad():
        assert torch.allclose(model(prompts), logits, atol=1e-5)
        assert torch.allclose(model(prompts[:1, :1]), logits[:1, :1], atol=1e-5)  # one row, as a decoding step
    assert torch.equal(generate(model, prompts, max_new_tokens=12, temperature=0), tokens)
    assert torch.equal(generate(model, prompts, max_new_tokens=12, temperature=0, cache="static"), static)
    state = model.state_dict()  # the plain model's keys and values: nothing packed is saved
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    assert all(type(m) is not PackedLinear for m in loaded.modules())
    assert torch.equal(generate(loaded, prompts, max_new_tokens=12, temperature=0), tokens)
    assert prepack_linears_(model) == 0  # nothing plain is left
    assert unpack_linears_(model) == 9
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == 9 and model.lm_head.weight is model.wte.weight
    assert all(p is params[k] for k, p in model.named_parameters())
    with torch.no_grad():
        assert torch.allclose(model(prompts), logits, atol=1e-5)


def test_packed_weights_follow_changes_copies_and_autograd():
    import copy

    from bigmodels.compress.layout import prepack_linears_

    model, other = tiny_gpt(), tiny_gpt()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    prompts = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(2))
    prepack_linears_(model)
    model.load_state_dict(other.state_dict())  # in place: the packed copies must be rebuilt, not kept stale
    with torch.no_grad():
        expected = other(prompts)
        assert torch.allclose(model(prompts), expected, atol=1e-5)
        twin = copy.deepcopy(model)  # the opaque packed tensors are not copied but rebuilt
        assert torch.allclose(twin(prompts), expected, atol=1e-5)
    out = model(prompts)  # autograd on: plain F.linear, so the weights get gradients
    out.sum().backward()
    assert model.blocks[0].mlp.fc.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    # frozen weights and an input that wants its gradient (what saliency / integrated gradients ask of a model):
    # the gradient flows through the packed layers as through plain ones (oneDNN's packed product has no
    # backward, so running it here would leave the input without a gradient)
    frozen, plain = copy.deepcopy(model), copy.deepcopy(other)
    for m in (frozen, plain):
        m.requires_grad_(False)
    x = torch.randn(2, 5, 64)
    grads = []
    for m in (frozen, plain):
        leaf = x.clone().requires_grad_(True)
        m.blocks[0].mlp(leaf).square().sum().backward()
        grads.append(leaf.grad)
    assert type(frozen.blocks[0].mlp.fc).__name__ == "PackedLinear"
    assert grads[0] is not None and grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5)


def test_prepacking_refuses_training_and_non_cpu_models():
    from bigmodels.compress.layout import prepack_linears_, prepare_for_cpu_decoding
    from bigmodels.errors import ConfigError

    model = tiny_gpt().train()
    with pytest.raises(ConfigError, match=r"training mode; call model\.eval\(\)"):
        prepack_linears_(model)
    with pytest.raises(ConfigError, match=r"parameters on meta; move it with model\.cpu\(\)"):
        prepare_for_cpu_decoding(tiny_gpt().to("meta"))
    with pytest.raises(ConfigError, match="int8='yes'"):
        prepare_for_cpu_decoding(tiny_gpt(), int8="yes")
    assert all(type(m).__name__ != "PackedLinear" for m in model.modules())


def test_prepare_for_cpu_decoding_fp32_and_int8():
    from bigmodels.compress.layout import PackedLinear, prepare_for_cpu_decoding
    from bigmodels.compress.quantize import Int8DynamicLinear

    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("this PyTorch build has no x86 int8 kernels (fbgemm)")
    prompts = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(3))
    reference = tiny_gpt()
    tokens = generate(reference, prompts, max_new_tokens=8, temperature=0)
    fp32 = prepare_for_cpu_decoding(tiny_gpt())
    assert sum(isinstance(m, PackedLinear) for m in fp32.modules()) == 9
    assert torch.equal(generate(fp32, prompts, max_new_tokens=8, temperature=0), tokens)
    int8 = prepare_for_cpu_decoding(tiny_gpt(), int8=True)
    assert sum(isinstance(m, Int8DynamicLinear) for m in int8.modules()) == 9  # the output layer too
    assert not any(isinstance(m, (PackedLinear, torch.nn.Linear)) for m in int8.modules())
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(int8(prompts).flatten(), reference(prompts).flatten(), dim=0)
    assert cos > 0.99


def test_prepared_weights_are_column_major_and_a_compiled_step_multiplies_with_them():
    """Packed for eager steps, column-major for compiled ones: under torch.compile a PackedLinear is plain
    F.linear (dynamo cannot trace its packed copy's cache), so a prepared model still compiles, whole-graph."""
    from bigmodels.compress.layout import PackedLinear, prepare_for_cpu_decoding
    from bigmodels.infer.generate import Decoder

    prompts = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(3))
    tokens = generate(tiny_gpt(), prompts, max_new_tokens=8, temperature=0)
    model = prepare_for_cpu_decoding(tiny_gpt())
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert layers and all(m.weight.stride() == (1, m.out_features) for m in layers)
    assert model.lm_head.weight is model.wte.weight  # still tied
    assert all(t.is_contiguous() for t in model.state_dict().values())  # files unchanged
    calls = []
    for layer in layers:  # the steps ran through the compiled graph
        layer.register_forward_hook(lambda mod, args, out: calls.append(torch.compiler.is_compiling()))
    torch._dynamo.reset()
    try:
        decoder = Decoder(model, compile_options={"backend": "eager", "fullgraph": True})
        out = generate(model, prompts, max_new_tokens=8, temperature=0, cache="static", compile=True,
                       decoder=decoder)
    finally:
        torch._dynamo.reset()
    assert torch.equal(out, tokens)
    assert decoder._compiled["cpu", False] is not None and any(calls)


def test_fused_gelu_keeps_outputs_tokens_gradients_and_unpacks():
    from bigmodels.compress.layout import FusedActivation, fuse_activations_, prepack_linears_, unpack_linears_
    from bigmodels.testing import tiny_model

    prompts = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(3))
    reference = tiny_gpt()
    tokens = generate(reference, prompts, max_new_tokens=8, temperature=0)
    model = tiny_gpt()
    prepack_linears_(model)
    assert fuse_activations_(model) == 2  # one fc -> GELU per block
    assert model.blocks[0].mlp.fc.activation == "gelu_tanh" and isinstance(model.blocks[0].mlp.act, FusedActivation)
    with torch.no_grad():
        torch.testing.assert_close(model(prompts), reference(prompts), rtol=1e-4, atol=1e-4)
    assert torch.equal(generate(model, prompts, max_new_tokens=8, temperature=0), tokens)
    # with gradients the layer takes the plain path, and still applies its GELU
    x = torch.randn(3, 64, requires_grad=True)
    fc = model.blocks[0].mlp.fc
    y = fc(x)
    torch.testing.assert_close(y, torch.nn.functional.gelu(x @ fc.weight.t() + fc.bias, approximate="tanh"))
    y.sum().backward()
    assert x.grad is not None
    assert unpack_linears_(model) == 9 and type(model.blocks[0].mlp.act) is torch.nn.GELU
    with torch.no_grad():
        torch.testing.assert_close(model(prompts), reference(prompts), rtol=1e-4, atol=1e-4)
    # BERT's exact (erf) GELU, in an encoder
    bert = tiny_model("bert-base", head="sequence_classification", num_labels=2).eval()
    ids = torch.randint(0, bert.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = bert(ids)
    prepack_linears_(bert)
    assert fuse_activations_(bert) == bert.config.num_hidden_layers
    assert {m.activation for m in bert.modules() if getattr(m, "activation", None)} == {"gelu"}
    with torch.no_grad():
        torch.testing.assert_close(bert(ids), expected, rtol=1e-4, atol=1e-5)


def test_a_gelu_that_also_reads_another_input_is_not_fused(monkeypatch):
    from bigmodels.compress.layout import fuse_activations_, prepack_linears_
    from bigmodels.models import _contract

    class Shared(torch.nn.Module):  # one GELU module after the layer and on the raw input: fusing would skip one
        def __init__(self):
            super().__init__()
            self.fc, self.act = torch.nn.Linear(8, 8), torch.nn.GELU()

        def forward(self, x):
            return self.act(self.fc(x)) + self.act(x)

    model = Shared().eval()
    prepack_linears_(model)
    monkeypatch.setattr(_contract, "example_inputs", lambda m, **kw: torch.randn(4, 8))  # not a registered model
    assert fuse_activations_(model) == 0
    assert model.fc.activation is None and type(model.act) is torch.nn.GELU


_FREED = """
import sys, torch
from bigmodels.compress import layout
if sys.argv[1] == "retain":
    assert layout.retain_freed_memory() is True and layout.retain_freed_memory() is True  # once, then the same
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
x = torch.ones(16 << 20)  # 64 MB, written
held = resident()
del x
print((held - resident()) / 2 ** 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="retain_freed_memory tunes glibc's malloc (a no-op elsewhere)")
def test_retain_freed_memory_keeps_a_freed_block_for_reuse():
    """glibc unmaps a freed 64 MB block at once (the pages are gone: the next one faults in fresh pages); after
    retain_freed_memory the block stays in the heap, resident, for the next allocation. Each side in a fresh
    process (the setting is process-wide)."""
    returned = {side: float(subprocess.run([sys.executable, "-c", _FREED, side], capture_output=True, text=True,
                                           check=True).stdout) for side in ("default", "retain")}
    assert returned["default"] > 48, returned  # MB given back to the OS on free
    assert returned["retain"] < 4, returned


def test_prepare_for_cpu_decoding_retains_freed_memory(monkeypatch):
    from bigmodels.compress import layout

    called = []
    monkeypatch.setattr(layout, "retain_freed_memory", lambda: called.append(True) or True)
    layout.prepare_for_cpu_decoding(tiny_gpt().eval())
    assert called == [True]
