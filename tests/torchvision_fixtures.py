"""torchvision reference fixtures: deterministic synthetic weights and images, and the logits torchvision gave.

Each ``fixtures/torchvision/<name>.json`` (copied from ../shared/fixtures/torchvision) holds the exact
torchvision state-dict manifest of a model, the builder arguments, and the float64 eval-mode logits that
torchvision produced for the weights and images built below. A model that loads these weights strictly and
reproduces the logits is weight-compatible with torchvision. The formula is the fixtures' own (see their
``synthetic.py``), written again here so the tests need nothing outside the repository.
"""

from __future__ import annotations

import ast
import json
import math
import zlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision"
_M32 = (1 << 32) - 1


def load_fixture(name: str) -> dict:
    """The fixture of torchvision model ``name`` with ``manifest`` as a list and ``logits`` as a float64 tensor."""
    record = json.loads((FIXTURES / f"{name}.json").read_text())
    for key in ("manifest", "logits"):
        if isinstance(record[key], str):
            record[key] = ast.literal_eval(record[key])
    record["logits"] = torch.tensor(record["logits"], dtype=torch.float64)
    return record


def _uniform(key: str, n: int) -> torch.Tensor:
    """n values in [-1, 1) from an integer hash of (key, flat index)."""
    h = (torch.arange(n, dtype=torch.int64) * 2654435761 + zlib.crc32(key.encode())) & _M32
    for _ in range(2):
        h = h ^ (h >> 16)
        h = (h * 0x45D9F3B) & _M32
    h = h ^ (h >> 16)
    return h.to(torch.float64) / 2**31 - 1


def synthetic_tensor(key: str, shape, dtype: torch.dtype) -> torch.Tensor:
    shape = tuple(shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    n = math.prod(shape)
    u = _uniform(key, n)
    last = key.rsplit(".", 1)[-1]
    if len(shape) >= 2:  # conv / linear weights: a He-like scale so activations stay O(1)
        u = u * math.sqrt(3.0) * math.sqrt(2.0 / (n / shape[0]))
    elif last == "running_var":
        u = 1 + 0.5 * u.abs()
    elif last == "weight":  # norm scales
        u = 1 + 0.1 * u
    else:
        u = 0.1 * u
    return u.reshape(shape).to(dtype)


def synthetic_state_dict(manifest) -> dict[str, torch.Tensor]:
    """manifest: [[key, shape, dtype name], ...] as the fixtures store it."""
    return {k: synthetic_tensor(k, s, getattr(torch, d)) for k, s, d in manifest}


def synthetic_images(batch: int, size: int) -> torch.Tensor:
    """A fixed batch of distinct image-like inputs (waves plus a blob), computed in float64, returned fp32."""
    b = torch.arange(batch, dtype=torch.float64).view(-1, 1, 1, 1)
    c = torch.arange(3, dtype=torch.float64).view(1, -1, 1, 1)
    h = torch.arange(size, dtype=torch.float64).view(1, 1, -1, 1)
    w = torch.arange(size, dtype=torch.float64).view(1, 1, 1, -1)
    fh = 0.031 * (b + 1) + 0.013 * c
    fw = 0.017 * (2 * b + 1) + 0.029 * c
    waves = 1.5 * torch.sin(h * fh + w * fw + b / 2 + c)
    cy = size * (0.3 + 0.4 * (b % 2))
    cx = size * (0.25 + 0.5 * ((b // 2) % 2))
    blob = 2 * torch.exp(-((h - cy) ** 2 + (w - cx) ** 2) / (2 * (size / 6) ** 2))
    return (waves + blob).float()


def fixture_inputs(record: dict) -> torch.Tensor:
    spec = record["input"]
    assert spec["fn"] == "synthetic_images", spec
    return synthetic_images(spec["batch"], spec["size"])


def assert_matches_torchvision(model: torch.nn.Module, name: str) -> None:
    """Load fixture ``name``'s weights into ``model`` strictly and compare eval logits with torchvision's.

    Tolerance: max abs diff <= 1e-5 * max(1, max |logit|) (the fixtures' own rule: fp32 rounding alone
    reaches ~2e-4 on resnet50's logits of magnitude ~300).
    """
    record = load_fixture(name)
    state = synthetic_state_dict(record["manifest"])
    ours = model.state_dict()
    assert sorted(ours) == sorted(state), (sorted(set(ours) ^ set(state)))[:10]
    for k, v in state.items():
        assert tuple(ours[k].shape) == tuple(v.shape), (k, tuple(ours[k].shape), tuple(v.shape))
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        out = model(fixture_inputs(record))
    expected = record["logits"]
    assert out.shape == expected.shape, (out.shape, expected.shape)
    diff = (out.double() - expected).abs().max().item()
    bound = 1e-5 * max(1.0, expected.abs().max().item())
    assert diff <= bound, f"{name}: max abs diff {diff:.3g} > {bound:.3g}"
    assert sum(p.numel() for p in model.parameters()) == record["num_params"]
