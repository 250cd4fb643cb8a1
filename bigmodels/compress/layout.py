"""Memory layout of Linear weights for one-token decoding on the CPU: an explicit, reversible transform.

A decoding step multiplies one row per sequence by every weight matrix (a matrix-vector product), so it is
bound by how fast the weights stream from memory. ``nn.Linear`` keeps W as (out, in) row-major; the BLAS kernel
for ``x @ W^T`` at one row streams that layout measurably slower than W^T stored contiguously (in, out), which is
the layout Hugging Face's GPT-2 ``Conv1D`` keeps: on 2 CPU threads GPT-2 124M's 49 matrices went 1.2-1.5x
faster as (in, out) (``benchmarks/cpu_decode.md``). :func:`column_major_linears_` re-lays each weight so: the
same values and shape (out, in), column-major strides, the same ``Parameter`` objects (tied weights stay tied;
the embedding lookup of a tied output layer reads the same matrix). Results equal the row-major model's to
float rounding (the summation order of the kernel changes).

``state_dict()`` still gives contiguous (row-major) tensors, so ``bigmodels.save`` and the Hugging Face export
work unchanged and the files are the same. :func:`row_major_linears_` undoes it.

    >>> import bigmodels, torch
    >>> model = bigmodels.create_model("gpt_mini").eval()
    >>> column_major_linears_(model), model.lm_head.weight.is_contiguous(), model.lm_head.weight is model.wte.weight
    (17, False, True)
    >>> all(t.is_contiguous() for t in model.state_dict().values())
    True
    >>> row_major_linears_(model)
    17
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["column_major_linears_", "row_major_linears_"]


def _plain_weights(model: nn.Module) -> list[nn.Parameter]:
    """The distinct float weights of the plain ``nn.Linear`` layers (no parametrization, no quantized tensor)."""
    seen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, nn.Linear) and not parametrize.is_parametrized(m):
            w = m.weight
            if type(w) is nn.Parameter and w.is_floating_point() and w.dim() == 2:
                seen.setdefault(id(w), w)
    return list(seen.values())


def _contiguous_state(module: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: column-major tensors saved row-major; tied ones stay one tensor (one copy each)."""
    copies: dict[tuple[int, int], torch.Tensor] = {}
    for key, t in state_dict.items():
        if isinstance(t, torch.Tensor) and not t.is_contiguous() and t.dim() == 2 and t.t().is_contiguous():
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset())
            state_dict[key] = copies.setdefault(ptr, t.contiguous())


def column_major_linears_(model: nn.Module) -> int:
    """Store every plain ``nn.Linear`` weight of ``model`` column-major (W^T contiguous), in place, for faster
    one-token (matrix-vector) steps on the CPU; returns how many weights were re-laid. See the module docstring.

    >>> layer = nn.Linear(8, 4)
    >>> column_major_linears_(layer), layer.weight.shape, layer.weight.stride()
    (1, torch.Size([4, 8]), (1, 4))
    """
    changed = 0
    with torch.no_grad():
        for w in _plain_weights(model):
            if w.is_contiguous():
                w.data = w.data.t().contiguous().t()  # (out, in) values, strides (1, out)
                changed += 1
    if changed and not getattr(model, "_column_major_hook", False):
        model.register_state_dict_post_hook(_contiguous_state)
        model._column_major_hook = True
    return changed


def row_major_linears_(model: nn.Module) -> int:
    """Undo :func:`column_major_linears_`: every plain ``nn.Linear`` weight back to row-major; returns how many."""
    changed = 0
    with torch.no_grad():
        for w in _plain_weights(model):
            if not w.is_contiguous():
                w.data = w.data.contiguous()
                changed += 1
    return changed
