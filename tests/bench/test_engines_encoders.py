"""prepare_ours_cpu on encoders: oneDNN-packed float Linear layers (fp32) and fbgemm int8 GEMMs, same outputs."""

from __future__ import annotations

import platform
import sys

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


@pytest.mark.parametrize("overrides", [*HEADS, {"head": "embedding", "pooling": "cls", "normalize": False}],
                         ids=lambda o: f"{o['head']}-{o.get('pooling', '')}")
def test_the_peers_head_in_numpy_is_ours(overrides):
    """A peer engine's output finished by our head in numpy (no torch thread woken in its timed call) equals our
    model's own output on the same hidden states."""
    from bigmodels.bench.engines import _numpy_head

    torch.manual_seed(0)
    model = tiny_model("bert-base", **overrides).eval()
    x = torch.randint(1, model.config.vocab_size, (3, 12))
    mask = torch.ones_like(x)
    mask[1, 8:] = 0  # padding: the mean covers real tokens only
    with torch.inference_mode():
        want = model(x, attention_mask=mask)
        hidden, pooled = model.encode_ids(x, attention_mask=mask)
    head = _numpy_head(model)
    if overrides["head"] == "embedding":
        got = head(hidden.numpy(), mask.numpy())
    else:
        got = head(pooled.numpy())
    assert got.shape == tuple(want.shape)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)


def _gomp_parallel_binding(code: str) -> str:
    """The library that CTranslate2's ``GOMP_parallel`` binds to when ``code`` runs in a fresh interpreter (the
    dynamic linker's own report, LD_DEBUG=bindings)."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LD_DEBUG": "bindings"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if "libctranslate2" in ln and "`GOMP_parallel'" in ln]
    assert lines, "no binding of GOMP_parallel reported"
    return lines[0].split(" to ", 1)[1].split()[0]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="RTLD_DEEPBIND and LD_DEBUG are glibc's")
def test_ctranslate2_runs_on_its_own_openmp_runtime_beside_torch():
    """Imported after torch, CTranslate2 binds its OpenMP calls to torch's libgomp (the control: its worker thread
    then adds a thread team to torch's runtime, which throttles both); through import_ctranslate2 it binds to the
    libgomp its wheel ships. The process's dlopen flags are left as they were."""
    pytest.importorskip("ctranslate2")
    plain = _gomp_parallel_binding("import torch; import ctranslate2")
    ours = _gomp_parallel_binding("import sys, torch; f = sys.getdlopenflags(); "
                                  "from bigmodels.bench.engines import import_ctranslate2; import_ctranslate2(); "
                                  "assert sys.getdlopenflags() == f")
    assert "/torch/" in plain  # what happens without it
    assert "ctranslate2.libs" in ours and "libgomp" in ours
