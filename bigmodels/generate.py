"""Decoding for any decoder-only model: greedy, temperature, top-k, top-p, repetition penalty, stop conditions.

A model qualifies by the decoder contract: ``model(ids, attention_mask=..., positions=..., cache=...)``
returns logits (B, T, V), and ``model.new_cache()`` gives an empty :class:`~bigmodels.nn.KVCache`. The prompt
runs through the model once; then each step feeds only the newest token and reuses the cached keys/values.

Prompts of different lengths are left-padded (so every row's next token sits in the last column) and carry
an attention mask; positions count real tokens only, as Hugging Face does, so results match theirs::

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini").eval()
    >>> out = generate(model, [[5, 6, 7], [8, 9]], max_new_tokens=4, temperature=0, pad_token_id=0)
    >>> out.shape
    torch.Size([2, 7])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError, DataError
from .nn.sampling import sample_next_token

__all__ = ["generate", "stream", "pad_prompts", "apply_repetition_penalty"]

Prompt = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists to one length: (ids (B, T), attention_mask (B, T), 1 = token, 0 = padding).

    >>> pad_prompts([[1, 2, 3], [4]], pad_id=0)
    (tensor([[1, 2, 3],
            [0, 0, 4]]), tensor([[1, 1, 1],
            [0, 0, 1]]))
    """
    if not prompts:
        raise DataError("no prompts given; pass at least one list of token ids")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise DataError(f"prompt(s) {empty} are empty; give every prompt at least one token to start from")
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, T - len(p):] = 1
    return ids, mask


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) as Hugging Face applies it: for tokens already in the sequence
    (``seen`` (B, V) bool), divide positive logits by ``penalty`` and multiply negative ones."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)  # (B, V)


@dataclass
class _Plan:
    """A validated request: the padded prompt and the stopping rules."""

    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor | None  # (B, T), None when nothing is padded
    max_new_tokens: int
    stop_ids: torch.Tensor  # (S,)
    pad_id: int | None
    stop_strings: tuple[str, ...]
    decode: Callable[[list[int]], str] | None
    generator: torch.Generator | None


def _plan(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
          stop_tokens, eos_token_id, pad_token_id, stop_strings, decode, seed) -> _Plan:
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ConfigError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k={top_k} must be >= 1 (or None to keep every token)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p} must be in (0, 1] (or None to keep every token)")
    if repetition_penalty <= 0:
        raise ConfigError(f"repetition_penalty={repetition_penalty} must be > 0 (1.0 = none)")
    if stop_strings and decode is None:
        raise ConfigError("stop_strings need decode=<a function from token ids to text>, e.g. tokenizer.decode")
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    stops = [*stop_tokens, *eos]
    pad_id = pad_token_id if pad_token_id is not None else (eos[0] if eos else None)

    device = next(model.parameters()).device
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids[None] if input_ids.dim() == 1 else input_ids
        if ids.dim() != 2 or ids.is_floating_point():
            raise DataError(f"input_ids must be token ids (batch, time), got {tuple(input_ids.shape)} {ids.dtype}")
        mask = attention_mask
    else:
        nested = len(input_ids) > 0 and (isinstance(input_ids[0], Sequence) or torch.is_tensor(input_ids[0]))
        prompts = list(input_ids) if nested else [input_ids]
        ids, mask = pad_prompts(prompts, pad_id if pad_id is not None else 0)
        if attention_mask is not None:
            raise ConfigError("attention_mask is built from the prompt lists; pass it only with a tensor of ids")
    if ids.numel() == 0:
        raise DataError("the prompt is empty; give at least one token to start from")
    if mask is not None:
        if mask.shape != ids.shape:
            raise DataError(f"attention_mask {tuple(mask.shape)} must have the shape of input_ids {tuple(ids.shape)}")
        if not mask.bool().any(-1).all():
            raise DataError("a prompt row is all padding (attention_mask 0); give every prompt at least one token")
        mask = None if mask.bool().all() else mask.to(device=device, dtype=torch.long)  # no padding: no mask
    if ids.size(0) > 1 and stops + list(stop_strings) and pad_id is None:
        raise ConfigError("rows of a batch stop at different steps; pass pad_token_id (or eos_token_id) to pad them")

    context = getattr(getattr(model, "config", None), "block_size", None)
    T = ids.size(1)
    if context is not None and T + max_new_tokens > context:
        if T >= context:
            fix = f"shorten the prompt to fewer than {context} tokens"
        elif max_new_tokens >= context:
            fix = f"lower max_new_tokens to at most {context - T}"
        else:
            fix = (f"shorten the prompt to at most {context - max_new_tokens} tokens or lower max_new_tokens to at "
                   f"most {context - T}")
        raise DataError(
            f"the prompt ({T} tokens) + max_new_tokens={max_new_tokens} = {T + max_new_tokens} exceeds the model's "
            f"context of {context} tokens (block_size); {fix}, or use a model with a longer context"
        )
    generator = seed if isinstance(seed, torch.Generator) or seed is None else (
        torch.Generator(device=device).manual_seed(seed))
    return _Plan(ids.to(device=device, dtype=torch.long), mask, max_new_tokens,
                 torch.tensor(stops, dtype=torch.long, device=device), pad_id, tuple(stop_strings), decode, generator)


@torch.no_grad()
def _steps(model: nn.Module, p: _Plan, temperature, top_k, top_p, repetition_penalty) -> Iterator[torch.Tensor]:
    B = p.ids.size(0)
    was_training = model.training
    model.eval()  # dropout off while decoding; restored when the generator finishes or is closed
    try:
        cache, mask = model.new_cache(), p.mask
        logits = model(p.ids, attention_mask=mask, cache=cache)[:, -1].float()  # (B, V)
        # tokens already in each row (padding excluded), for the repetition penalty: (B, V)
        counts = torch.zeros_like(logits, dtype=torch.long)
        seen = counts.scatter_add_(1, p.ids, torch.ones_like(p.ids) if mask is None else mask) > 0
        done = torch.zeros(B, dtype=torch.bool, device=p.ids.device)
        new: list[list[int]] = [[] for _ in range(B)]
        for step in range(p.max_new_tokens):
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            nxt = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                    generator=p.generator).squeeze(-1)  # (B,)
            if p.pad_id is not None:
                nxt = nxt.masked_fill(done, p.pad_id)  # finished rows only pad
            yield nxt
            done |= torch.isin(nxt, p.stop_ids)
            if p.stop_strings:
                for row, token in enumerate(nxt.tolist()):
                    if not done[row]:
                        new[row].append(token)
                        if any(s in p.decode(new[row]) for s in p.stop_strings):
                            done[row] = True
            if bool(done.all()) or step == p.max_new_tokens - 1:
                return
            seen.scatter_(1, nxt[:, None], True)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # (B, T + step + 1)
            logits = model(nxt[:, None], attention_mask=mask, cache=cache)[:, -1].float()
    finally:
        model.train(was_training)


def stream(
    model: nn.Module,
    input_ids: Prompt,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_tokens: Sequence[int] = (),
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    seed: int | torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Like :func:`generate`, but yield each step's new tokens (B,) as soon as they are chosen.

    The arguments are checked at the call, before the first token::

        for tokens in stream(model, [ids], temperature=0.8, seed=0):
            print(tokenizer.decode(tokens.tolist()), end="", flush=True)
    """
    plan = _plan(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                 stop_tokens, eos_token_id, pad_token_id, stop_strings, decode, seed)
    return _steps(model, plan, temperature, top_k, top_p, repetition_penalty)


def generate(
    model: nn.Module,
    input_ids: Prompt,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_tokens: Sequence[int] = (),
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    seed: int | torch.Generator | None = None,
) -> torch.Tensor:
    """Continue prompts by up to ``max_new_tokens`` tokens -> LongTensor (B, T + new), prompts included.

    ``input_ids``: a (B, T) tensor (with ``attention_mask`` for left padding), one list of ids, or a list of
    lists (left-padded here with :func:`pad_prompts`). ``temperature=0`` is greedy; ``top_k`` / ``top_p`` filter
    the sampled distribution. A row ends at a token of ``stop_tokens`` or ``eos_token_id`` (kept), or once the
    text it generated (``decode(new_ids)``) contains one of ``stop_strings``; later steps pad it with
    ``pad_token_id`` (default: the eos id), and decoding stops when every row has ended. ``seed`` (an int or a
    ``torch.Generator``) makes sampling reproducible.

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini")
    >>> generate(model, [1, 2, 3], max_new_tokens=5, seed=0).shape
    torch.Size([1, 8])
    """
    plan = _plan(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                 stop_tokens, eos_token_id, pad_token_id, stop_strings, decode, seed)
    new = [t[:, None] for t in _steps(model, plan, temperature, top_k, top_p, repetition_penalty)]
    return torch.cat([plan.ids, *new], dim=1)  # (B, T + new)
