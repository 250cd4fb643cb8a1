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

Speed: ``cache="static"`` decodes with a preallocated :class:`~bigmodels.nn.StaticKVCache` (the model's
``new_cache(batch_size=..., max_length=..., static=True)``), so every step has the same shapes, and
``compile=True`` compiles that one-token step once with ``torch.compile(mode="reduce-overhead")``: on CUDA the
whole step replays as one CUDA graph. Outputs are the dynamic cache's, token for token. Decoding reads the
device only where a stop rule needs it (:func:`generate` checks every few steps and trims).
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..nn.sampling import sample_next_token

__all__ = ["generate", "stream", "pad_prompts", "apply_repetition_penalty", "CACHES"]

log = logging.getLogger(__name__)

Prompt = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]
CACHES = ("dynamic", "static")
# torch.compile options for the one-token step, by device type. CUDA graphs ("reduce-overhead") replay a step
# with one launch; where a device has no options (CPU: no graphs, and compiling costs more than it saves on a
# small step) the static step runs uncompiled, with a logged note.
_COMPILE_OPTIONS: dict[str, dict[str, Any]] = {"cuda": {"mode": "reduce-overhead", "fullgraph": True}}
_COMPILED: dict[str, Callable | None] = {}  # device type -> the compiled step (None: none, noted once)
_STATIC_ROUND = 256  # compiled static caches round their length up, so nearby request lengths share one graph
_STOP_CHECK_EVERY = 8  # generate() reads "has every row stopped?" from the device this often (stream: every step)


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
    cache: str  # "dynamic" | "static"
    compile: bool


def _plan(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
          stop_tokens, eos_token_id, pad_token_id, stop_strings, decode, seed, cache, compile) -> _Plan:
    if cache not in CACHES:
        raise ConfigError(f"cache={cache!r} is not valid; choose one of {', '.join(CACHES)}")
    if not isinstance(compile, bool):
        raise ConfigError(f"compile={compile!r} must be True or False")
    if compile and cache != "static":
        raise ConfigError("compile=True compiles one decoding step for every step, which needs the same shapes "
                          "each time: pass cache='static' too")
    if cache == "static" and "static" not in inspect.signature(model.new_cache).parameters:
        raise ConfigError(f"{type(model).__name__} has no static cache (its new_cache() takes no static=); "
                          "use cache='dynamic'")
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
                 torch.tensor(stops, dtype=torch.long, device=device), pad_id, tuple(stop_strings), decode, generator,
                 cache, compile)


def _decode_step(model: nn.Module, cache, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One token per row through a static cache: ids (B, 1) -> next-token logits (B, V). The unit compiled."""
    return model(ids, attention_mask=mask, cache=cache)[:, -1].float()


def _compiled_step(device: torch.device) -> Callable | None:
    """:func:`_decode_step` compiled for ``device``'s type, or None (noted once) where it has no options."""
    if device.type not in _COMPILED:
        options = _COMPILE_OPTIONS.get(device.type)
        if options is None:
            log.warning("compile=True: no compiled decoding for %s (CUDA graphs need a CUDA device); decoding "
                        "with the static cache, uncompiled", device.type)
        _COMPILED[device.type] = None if options is None else torch.compile(_decode_step, **options)
    return _COMPILED[device.type]


# Static caches of compiled decoding, reused call after call: a compiled step (and its CUDA graph) is bound to
# its cache's buffers, whose addresses torch.compile is told stay put. model -> {(B, L, dtype, device): [free]}
_POOL: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list]] = weakref.WeakKeyDictionary()


class _DynamicDecoder:
    """A growing :class:`~bigmodels.nn.KVCache`; the running attention mask grows by one column per step."""

    def __init__(self, model: nn.Module, p: _Plan) -> None:
        self.model, self.mask, self.cache = model, p.mask, model.new_cache()

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, attention_mask=self.mask, cache=self.cache)[:, -1].float()  # (B, V)

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(nxt.size(0), 1)], dim=1)  # (B, T + step + 1)
        return self.model(nxt[:, None], attention_mask=self.mask, cache=self.cache)[:, -1].float()  # (B, V)

    def close(self) -> None:
        pass


class _StaticDecoder:
    """A :class:`~bigmodels.nn.StaticKVCache` for prompt + new tokens: each step has the same shapes and inputs
    (the new tokens and one fixed mask), so a compiled step is captured once and replayed."""

    def __init__(self, model: nn.Module, p: _Plan) -> None:
        B, T = p.ids.shape
        device, dtype = p.ids.device, next(model.parameters()).dtype
        self.model, self.pooled = model, None
        self.step_fn = (_compiled_step(device) if p.compile else None) or _decode_step
        length = T + p.max_new_tokens
        if self.step_fn is _decode_step:
            self.cache = model.new_cache(batch_size=B, max_length=length, static=True, dtype=dtype, device=device)
        else:
            context = getattr(getattr(model, "config", None), "block_size", None) or length
            length = min(context, -(-length // _STATIC_ROUND) * _STATIC_ROUND)
            self.pooled = (B, length, dtype, device)
            self.cache = self._take_cache()
        # (B, L): the prompt's padding is 0, every later slot holds a real token once written (the cache itself
        # hides the slots not written yet), so one mask serves the prompt and every step
        self.mask = None if p.mask is None else torch.cat([p.mask, p.mask.new_ones(B, length - T)], dim=1)
        self.graphs = self.step_fn is not _decode_step and device.type == "cuda"

    def _take_cache(self):
        try:
            cache = _POOL.setdefault(self.model, {}).setdefault(self.pooled, []).pop()
            cache.reset()
            return cache
        except IndexError:  # none free: a new one (and, for its new addresses, one more compilation)
            B, length, dtype, device = self.pooled
        cache = self.model.new_cache(batch_size=B, max_length=length, static=True, dtype=dtype, device=device)
        for t in cache.tensors():
            torch._dynamo.mark_static_address(t)  # written in place: CUDA graphs keep the addresses, copy nothing
        return cache

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, attention_mask=self.mask, cache=self.cache)[:, -1].float()  # (B, V), uncompiled

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self.step_fn(self.model, self.cache, nxt[:, None], self.mask)  # (B, V)
        return logits.clone() if self.graphs else logits  # a CUDA graph's output is overwritten by its next replay

    def close(self) -> None:
        if self.pooled is not None:
            _POOL.setdefault(self.model, {}).setdefault(self.pooled, []).append(self.cache)
            self.pooled = None


@torch.no_grad()
def _steps(model: nn.Module, p: _Plan, temperature, top_k, top_p, repetition_penalty,
           check_every: int = 1) -> Iterator[torch.Tensor]:
    """Yield each step's tokens (B,). Whether every row has stopped is read from the device every
    ``check_every`` steps (a sync), and only when there is a stop rule; rows that stopped yield padding."""
    B = p.ids.size(0)
    stopping = p.stop_ids.numel() > 0 or bool(p.stop_strings)
    was_training = model.training
    model.eval()  # dropout off while decoding; restored when the generator finishes or is closed
    decoder = None
    try:
        decoder = (_StaticDecoder if p.cache == "static" else _DynamicDecoder)(model, p)
        logits = decoder.prefill(p.ids)  # (B, V)
        seen = None
        if repetition_penalty != 1.0:  # tokens already in each row (padding excluded): (B, V)
            counts = torch.zeros_like(logits, dtype=torch.long)
            seen = counts.scatter_add_(1, p.ids, torch.ones_like(p.ids) if p.mask is None else p.mask) > 0
        done = torch.zeros(B, dtype=torch.bool, device=p.ids.device)
        new: list[list[int]] = [[] for _ in range(B)]
        for step in range(p.max_new_tokens):
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            nxt = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                    generator=p.generator).squeeze(-1)  # (B,)
            if stopping and p.pad_id is not None:
                nxt = nxt.masked_fill(done, p.pad_id)  # finished rows only pad
            yield nxt
            if stopping:
                done |= torch.isin(nxt, p.stop_ids)
                if p.stop_strings:
                    for row, token in enumerate(nxt.tolist()):
                        if not done[row]:
                            new[row].append(token)
                            if any(s in p.decode(new[row]) for s in p.stop_strings):
                                done[row] = True
                if (step + 1) % check_every == 0 and bool(done.all()):
                    return
            if step == p.max_new_tokens - 1:
                return
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            logits = decoder.step(nxt)
    finally:
        if decoder is not None:
            decoder.close()
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
    cache: str = "dynamic",
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Like :func:`generate`, but yield each step's new tokens (B,) as soon as they are chosen.

    The arguments are checked at the call, before the first token::

        for tokens in stream(model, [ids], temperature=0.8, seed=0):
            print(tokenizer.decode(tokens.tolist()), end="", flush=True)
    """
    plan = _plan(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                 stop_tokens, eos_token_id, pad_token_id, stop_strings, decode, seed, cache, compile)
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
    cache: str = "dynamic",
    compile: bool = False,
) -> torch.Tensor:
    """Continue prompts by up to ``max_new_tokens`` tokens -> LongTensor (B, T + new), prompts included.

    ``input_ids``: a (B, T) tensor (with ``attention_mask`` for left padding), one list of ids, or a list of
    lists (left-padded here with :func:`pad_prompts`). ``temperature=0`` is greedy; ``top_k`` / ``top_p`` filter
    the sampled distribution. A row ends at a token of ``stop_tokens`` or ``eos_token_id`` (kept), or once the
    text it generated (``decode(new_ids)``) contains one of ``stop_strings``; later steps pad it with
    ``pad_token_id`` (default: the eos id), and decoding stops when every row has ended. ``seed`` (an int or a
    ``torch.Generator``) makes sampling reproducible.

    ``cache="static"`` preallocates the key/value cache for prompt + ``max_new_tokens`` (same shapes every step);
    ``compile=True`` (with the static cache) compiles the one-token step once, as CUDA graphs on CUDA; both give
    the tokens of the default ``cache="dynamic"``.

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini")
    >>> generate(model, [1, 2, 3], max_new_tokens=5, seed=0).shape
    torch.Size([1, 8])
    >>> generate(model, [1, 2, 3], max_new_tokens=5, seed=0, cache="static").shape
    torch.Size([1, 8])
    """
    plan = _plan(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                 stop_tokens, eos_token_id, pad_token_id, stop_strings, decode, seed, cache, compile)
    every = 1 if plan.stop_strings else _STOP_CHECK_EVERY
    steps = list(_steps(model, plan, temperature, top_k, top_p, repetition_penalty, check_every=every))
    new = torch.stack(steps, dim=1) if steps else plan.ids[:, :0]  # (B, new)
    if every > 1 and plan.stop_ids.numel() and new.size(1):
        # stops were read every few steps: drop the steps after the one where every row had stopped
        stopped = (torch.isin(new, plan.stop_ids).cumsum(dim=1) > 0).all(dim=0)  # (new,)
        if bool(stopped.any()):
            new = new[:, : int(stopped.int().argmax()) + 1]
    return torch.cat([plan.ids, new], dim=1)  # (B, T + new)
