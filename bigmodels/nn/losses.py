"""Losses that never hold what they need not: cross-entropy over a large vocabulary, a chunk of rows at a time.

A language model's output layer turns N hidden states (N, C) into N x V logits; for GPT-2 (V = 50257) and
a batch of 16 x 1024 tokens that is 3.3 GB in fp32, plus its gradient, for a number that needs only a
log-sum-exp per row. :func:`chunked_cross_entropy` computes the logits of ``chunk_size`` rows at a time
(upcast to fp32 inside the chunk only), and the gradient of each chunk right away, while its logits exist:
softmax - one_hot, times the output matrix for the hidden states and times the hidden states for the
matrix (the same three matrix products as the plain loss, nothing recomputed; the idea of Liger Kernel's
fused linear cross-entropy, Hsu et al. 2024). Backward only scales the stored gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

__all__ = ["chunked_cross_entropy", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 4096  # rows: 4096 x 50304 fp32 logits are 0.8 GB, big enough to keep a GPU's GEMMs busy


def _chunks(hidden, weight, targets, chunk_size, ignore_index, vocab_size, grad_hidden, grad_weight):
    """Sum of the per-row losses; fills ``grad_hidden`` (N, C) / ``grad_weight`` (V', C), when given, with the
    gradients of that sum (divided by the row count later: fp16 would flush tiny per-row shares to zero)."""
    loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]  # (n, C), (n,)
        logits = F.linear(h, weight)  # (n, V') in the compute dtype (autocast's, or the weights')
        if vocab_size < logits.size(1):
            logits[:, vocab_size:] = float("-inf")  # padded rows of the output matrix are no tokens
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (n, V'): fp32 only inside the chunk
        keep = t != ignore_index  # (n,)
        target = torch.where(keep, t, 0)[:, None]  # (n, 1): any valid column for ignored rows
        loss_sum -= (logp.gather(1, target).squeeze(1) * keep).sum()
        if grad_hidden is None and grad_weight is None:
            continue
        # d(summed loss)/d(logits) = softmax - one_hot(target) on kept rows, 0 on ignored ones
        g = logp.exp_()  # (n, V') softmax, in place
        g.scatter_add_(1, target, -keep[:, None].to(g.dtype))
        g = g.mul_(keep[:, None]).to(logits.dtype)  # one cast, back to the compute dtype
        del logits, logp
        if grad_hidden is not None:
            grad_hidden[start:start + chunk_size] = g @ weight  # (n, C)
        if grad_weight is not None:
            grad_weight += g.t() @ h.to(g.dtype)  # (V', C), accumulated in fp32
    return loss_sum


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward scales them by grad_output."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, ignore_index, vocab_size, need_hidden, need_weight):
        count = (targets != ignore_index).sum()  # a tensor: no device sync
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        loss_sum = _chunks(hidden, weight, targets, chunk_size, ignore_index, vocab_size, grad_hidden, grad_weight)
        for grad in (grad_hidden, grad_weight):  # of the mean loss
            if grad is not None:
                grad.div_(count)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = -100,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``targets``, ``chunk_size`` rows at a time.

    hidden (N, C) final hidden states, weight (V, C) the output layer's matrix, targets (N,) token ids
    (``ignore_index`` rows take no part). Equals ``F.cross_entropy(hidden @ weight.T, targets)`` (value and
    gradients) without ever holding all N x V logits. ``vocab_size`` < V treats the matrix's last rows as
    padding (a vocabulary rounded up for speed): their columns are left out of the softmax. Under autocast
    the matrix products run in the autocast dtype and the softmax in fp32, as the plain loss on upcast logits.

    >>> h, w, t = torch.randn(10, 8), torch.randn(50, 8), torch.randint(0, 50, (10,))
    >>> torch.allclose(chunked_cross_entropy(h, w, t, chunk_size=3), F.cross_entropy(h @ w.T, t))
    True
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise DataError(
            f"expected hidden states (N, C) and an output matrix (V, C), got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}; flatten the batch and time dimensions of the hidden states first"
        )
    if targets.shape != hidden.shape[:1] or targets.is_floating_point():
        raise DataError(f"targets must be token ids ({hidden.size(0)},), one per row of hidden, got "
                        f"{tuple(targets.shape)} {targets.dtype}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} must be a positive int (rows per chunk), e.g. 4096")
    vocab_size = weight.size(0) if vocab_size is None else vocab_size
    if not 0 < vocab_size <= weight.size(0):
        raise ConfigError(f"vocab_size={vocab_size} must be in 1..{weight.size(0)} (the rows of the output matrix)")
    need_hidden = torch.is_grad_enabled() and hidden.requires_grad
    need_weight = torch.is_grad_enabled() and weight.requires_grad
    if need_hidden or need_weight:
        return _ChunkedCrossEntropy.apply(hidden, weight, targets, chunk_size, ignore_index, vocab_size,
                                          need_hidden, need_weight)
    with torch.no_grad():
        count = (targets != ignore_index).sum()
        return _chunks(hidden, weight, targets, chunk_size, ignore_index, vocab_size, None, None) / count
