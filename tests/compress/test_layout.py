"""column_major_linears_: Linear weights stored W^T-contiguous for one-token decoding, same results and files."""

from __future__ import annotations

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
