"""prepare_ours_cpu on encoders: oneDNN-packed float Linear layers (fp32) and fbgemm int8 GEMMs, same outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigmodels.bench.engines import prepare_ours_cpu
from bigmodels.compress.layout import PackedLinear
from bigmodels.compress.quantize import Int8DynamicLinear
from bigmodels.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = [{"head": "sequence_classification", "num_labels": 2}, {"head": "embedding", "normalize": True}]


@pytest.mark.parametrize("overrides", HEADS, ids=lambda o: o["head"])
def test_encoder_fp32_is_packed_and_keeps_outputs(overrides):
    torch.manual_seed(0)
    model = tiny_model("bert-base", **overrides).eval()
    x = torch.randint(1, model.config.vocab_size, (3, 12))
    with torch.inference_mode():
        ref = model(x)
    ours, options, settings = prepare_ours_cpu(model, "fp32")
    assert ours is model and settings["precision"] == "fp32" and options == {"cache": "static", "compile": False}
    linears = [m for m in ours.modules() if isinstance(m, PackedLinear)]
    assert settings["prepack_linears_"] == len(linears) > 0 and settings["qkv_packed_modules"] > 0
    assert not any(type(m) is torch.nn.Linear for m in ours.modules())  # every float Linear is packed
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref, atol=1e-5, rtol=1e-5)  # packing q/k/v and weights changes nothing
        padded = torch.ones_like(x)
        padded[1, 7:] = 0  # padding still goes through the unpadded path with the packed layers
        torch.testing.assert_close(ours(x, attention_mask=padded), model(x, attention_mask=padded))


def test_encoder_int8_uses_fbgemm_and_stays_close():
    torch.manual_seed(0)
    model = tiny_model("bert-base", **HEADS[1]).eval()
    x = torch.randint(1, model.config.vocab_size, (4, 16))
    with torch.inference_mode():
        ref = model(x)
    ours, _, settings = prepare_ours_cpu(model, "int8")
    int8 = [m for m in ours.modules() if isinstance(m, Int8DynamicLinear)]
    assert settings["quantize_"]["layers"] == len(int8) > 0
    assert not any(type(m) is torch.nn.Linear for m in ours.modules())
    with torch.inference_mode():
        assert float(F.cosine_similarity(ours(x), ref, dim=-1).min()) > 0.99
