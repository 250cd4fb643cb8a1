"""Decoding for encoder-decoder models: greedy and beam search, batched over sources, with a decoder cache.

A model qualifies by the encoder-decoder contract (``bigmodels.models.transformer.Transformer`` has it):
``encode(input_ids, attention_mask) -> memory``, ``decode(ids, memory, memory_mask, cache=...) -> logits``,
``new_cache()``, ``reorder_cache(cache, beam_idx)`` and a config with ``decoder_start_token_id``,
``eos_token_id``, ``pad_token_id`` and ``max_position_embeddings``. The source is encoded once; the decoder
starts from ``decoder_start_token_id`` and feeds one new token a step.

Beam search follows Hugging Face's (transformers 5 ``generate(num_beams=K)``, formerly BeamSearchScorer):

* each step keeps the top 2K continuations of the K running beams by summed log-probability;
* a continuation that ends (eos, or the max_new_tokens-th token) becomes a finished hypothesis when it ranks
  among the first K of those 2K, scored ``sum of log-probs / length ** length_penalty``, where **length counts
  the generated tokens, the eos included and the decoder start token excluded** (a hypothesis cut at the limit
  has length max_new_tokens); the best K finished ones are kept;
* the K best continuations that did not end run on;
* ``early_stopping=True`` closes a source once K hypotheses are finished; ``False`` once, in addition, the best
  running beam's score / (its length ** length_penalty) can no longer beat the worst finished one; ``"never"``
  makes that bound use max_new_tokens when length_penalty > 0.

No eos is forced at the limit (Marian checkpoints set ``forced_eos_token_id``; generate(forced_eos_token_id=None)
matches). ``min_length`` is transformers' ``min_new_tokens``: eos is blocked until that many tokens are out::

    >>> import bigmodels, torch
    >>> model = bigmodels.create_model("transformer_mini")
    >>> hyps = translate(model, torch.tensor([[5, 6, 7], [8, 9, 0]]), num_beams=3, max_new_tokens=5)
    >>> len(hyps), all(len(h) <= 5 for h in hyps)
    (2, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..models._contract import inference
from .generate import _configure

__all__ = ["Seq2SeqGenerationConfig", "translate", "greedy_decode", "beam_search"]

Sources = torch.Tensor | Sequence[Sequence[int]]
Result = list[list[int]] | tuple[list[list[int]], list[float]]
_CALL_OPTIONS = ("attention_mask", "return_scores")


@dataclass(frozen=True)
class Seq2SeqGenerationConfig:
    """How :func:`translate`, :func:`greedy_decode` and :func:`beam_search` decode; checked when built.

    ``max_new_tokens``: the most target tokens per source (the eos included); ``min_length``: eos is blocked
    until that many are out (transformers' ``min_new_tokens``); ``num_beams``: 1 is greedy; ``length_penalty``
    and ``early_stopping`` as in beam search (module docstring).

    >>> Seq2SeqGenerationConfig(num_beams=4, max_new_tokens=64).num_beams
    4
    >>> Seq2SeqGenerationConfig(early_stopping="sometimes")
    Traceback (most recent call last):
    ...
    bigmodels.errors.ConfigError: early_stopping='sometimes' must be true, false or 'never'
    """

    max_new_tokens: int = 128
    min_length: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = True

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"max_new_tokens={n!r} must be a whole number >= 1")
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int) or self.min_length < 0:
            raise ConfigError(f"min_length={self.min_length!r} must be a whole number >= 0")
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ConfigError(f"num_beams={self.num_beams!r} must be a whole number >= 1")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise ConfigError(f"length_penalty={self.length_penalty!r} must be a number (1.0 = average log-prob)")
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(f"early_stopping={self.early_stopping!r} must be true, false or 'never'")


_BEAM_DEFAULTS = Seq2SeqGenerationConfig(num_beams=4)


def _prepare(model: nn.Module, input_ids: Sources, attention_mask: torch.Tensor | None,
             config: Seq2SeqGenerationConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Checked (ids (B, S), mask (B, S) or None when nothing is padded) on the model's device."""
    c, max_new_tokens = model.config, config.max_new_tokens
    if max_new_tokens > c.max_position_embeddings:
        raise ConfigError(f"max_new_tokens={max_new_tokens} exceeds the decoder's max_position_embeddings="
                          f"{c.max_position_embeddings}; lower max_new_tokens to at most {c.max_position_embeddings}")
    device = next(model.parameters()).device
    if not isinstance(input_ids, torch.Tensor):  # lists of ids: right-padded here
        rows = [list(r) for r in input_ids]
        if not rows or any(len(r) == 0 for r in rows):
            raise DataError("give at least one non-empty source (a list of token ids per sentence)")
        if attention_mask is not None:
            raise ConfigError("attention_mask is built from the source lists; pass it only with a tensor of ids")
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [c.pad_token_id] * (width - len(r)) for r in rows])
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.is_floating_point() or ids.numel() == 0:
        raise DataError(f"input_ids must be source token ids (batch, time), got {tuple(input_ids.shape)} {ids.dtype}")
    ids = ids.to(device=device, dtype=torch.long)
    if attention_mask is None and c.pad_token_id != c.eos_token_id and bool((ids == c.pad_token_id).any()):
        attention_mask = ids.ne(c.pad_token_id)  # as transformers' generate: padding is where the pad id is
    if attention_mask is not None:
        attention_mask = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
        if attention_mask.shape != ids.shape:
            raise DataError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                            f"{tuple(ids.shape)}")
        attention_mask = None if bool(attention_mask.bool().all()) else attention_mask.to(device, torch.long)
    return ids, attention_mask


def greedy_decode(
    model: nn.Module,
    input_ids: Sources,
    config: Seq2SeqGenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    return_scores: bool = False,
    **overrides: Any,
) -> Result:
    """The most likely next token at every step (batched); a row stops at its eos.

    Returns the generated ids per source, without the start token and without the eos; with ``return_scores``
    also each one's sum of log-probabilities (eos included) / length ** ``length_penalty`` (length as in beam
    search), the score :func:`beam_search` maximises. Options: ``config`` and keywords, as :func:`translate`.
    """
    config = _configure(Seq2SeqGenerationConfig, config, overrides, "greedy_decode()", _CALL_OPTIONS)
    if config.num_beams != 1:
        raise ConfigError(f"greedy_decode follows one beam, but num_beams={config.num_beams}; use beam_search (or "
                          "translate, which picks by num_beams)")
    c = model.config
    max_new_tokens, min_length, length_penalty = config.max_new_tokens, config.min_length, config.length_penalty
    ids, mask = _prepare(model, input_ids, attention_mask, config)
    B = ids.size(0)
    with inference(model):
        memory = model.encode(ids, mask)  # (B, S, D): once per source batch
        cache = model.new_cache()
        tokens = torch.full((B, 1), c.decoder_start_token_id, dtype=torch.long, device=ids.device)
        logp_sum = torch.zeros(B, device=ids.device)
        kept = torch.full((B,), max_new_tokens, dtype=torch.long, device=ids.device)  # tokens before eos
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        steps: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            logits = model.decode(tokens, memory, mask, cache=cache)[:, -1].float()  # (B, V)
            logp = logits.log_softmax(-1) if return_scores else None  # before min_length's block, as beam search
            if step < min_length:
                logits[:, c.eos_token_id] = -float("inf")
            nxt = logits.argmax(-1)  # (B,)
            if logp is not None:
                logp_sum += logp.gather(1, nxt[:, None]).squeeze(1).masked_fill(done, 0.0)
            ended = ~done & (nxt == c.eos_token_id)
            kept[ended] = step
            done |= ended
            steps.append(nxt)
            if bool(done.all()):
                break
            tokens = nxt[:, None]
        out = torch.stack(steps, 1).tolist()  # (B, steps)
        hyps = [row[:n] for row, n in zip(out, kept.tolist(), strict=True)]
    if not return_scores:
        return hyps
    lengths = torch.where(done, kept + 1, kept).float()  # the eos counts
    return hyps, (logp_sum / lengths ** length_penalty).tolist()


def beam_search(
    model: nn.Module,
    input_ids: Sources,
    config: Seq2SeqGenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    return_scores: bool = False,
    **overrides: Any,
) -> Result:
    """Beam search with ``num_beams`` beams per source, all sources in one batch (see the module docstring).

    Returns the best finished hypothesis per source, without the start token and the eos; with
    ``return_scores`` also its length-normalised score. Options: ``config`` (without one: 4 beams) and
    keywords, as :func:`translate`.
    """
    config = _configure(Seq2SeqGenerationConfig, config or _BEAM_DEFAULTS, overrides, "beam_search()", _CALL_OPTIONS)
    num_beams, max_new_tokens, min_length = config.num_beams, config.max_new_tokens, config.min_length
    length_penalty, early_stopping = config.length_penalty, config.early_stopping
    c = model.config
    ids, mask = _prepare(model, input_ids, attention_mask, config)
    B, K, L, dev = ids.size(0), num_beams, max_new_tokens, ids.device
    eos, neg = c.eos_token_id, -1.0e9  # neg: "not a candidate" (finite, as transformers, so sums stay ordered)
    rows = torch.arange(B, device=dev)[:, None]  # (B, 1)
    with inference(model):
        memory = model.encode(ids, mask).repeat_interleave(K, 0)  # (B*K, S, D): encoded once, one copy per beam
        mask = mask.repeat_interleave(K, 0) if mask is not None else None
        cache = model.new_cache()
        tokens = torch.full((B * K, 1), c.decoder_start_token_id, dtype=torch.long, device=dev)
        running = torch.zeros(B, K, 0, dtype=torch.long, device=dev)  # (B, K, step) the running beams' tokens
        running_scores = torch.full((B, K), neg, device=dev)
        running_scores[:, 0] = 0.0  # all beams start identical: expand only the first at step 0
        fin = torch.full((B, K, L), c.pad_token_id, dtype=torch.long, device=dev)  # finished hypotheses
        fin_scores = torch.full((B, K), neg, device=dev)  # their normalised scores, best first
        fin_lens = torch.zeros(B, K, dtype=torch.long, device=dev)  # tokens kept (eos excluded)
        is_fin = torch.zeros(B, K, dtype=torch.bool, device=dev)  # whether a slot holds a real hypothesis
        closed = torch.zeros(B, dtype=torch.bool, device=dev)  # sources that take no more hypotheses
        for step in range(L):
            logp = model.decode(tokens, memory, mask, cache=cache)[:, -1].float().log_softmax(-1)  # (B*K, V)
            if step < min_length:
                logp[:, eos] = -float("inf")
            V = logp.size(-1)
            total = (logp.view(B, K, V) + running_scores[..., None]).view(B, K * V)
            top, index = total.topk(2 * K, dim=1)  # (B, 2K) summed log-probs, best first
            beam, token = index // V, index % V  # which running beam each extends, with which token
            seqs = torch.cat([running[rows, beam], token[..., None]], dim=2)  # (B, 2K, step + 1)
            ends = token.eq(eos) if step < L - 1 else torch.ones_like(token, dtype=torch.bool)
            # finished hypotheses: ending continuations ranked among the first K (transformers' rule)
            new = ends & (torch.arange(2 * K, device=dev) < K) & ~closed[:, None]
            scores = torch.where(new, top / (step + 1) ** length_penalty, neg)
            padded = torch.full((B, 2 * K, L), c.pad_token_id, dtype=torch.long, device=dev)
            padded[..., : step + 1] = seqs
            keep = torch.cat([fin_scores, scores], 1).topk(K, dim=1).indices  # (B, K) of the 3K
            fin = torch.cat([fin, padded], 1)[rows, keep]
            fin_scores = torch.cat([fin_scores, scores], 1)[rows, keep]
            fin_lens = torch.cat([fin_lens, step + 1 - token.eq(eos).long()], 1)[rows, keep]
            is_fin = torch.cat([is_fin, new], 1)[rows, keep]
            # the K best continuations that did not end run on
            running_scores, pick = (top + ends.float() * neg).topk(K, dim=1)  # (B, K)
            running = seqs[rows, pick]
            tokens = token[rows, pick].reshape(B * K, 1)
            model.reorder_cache(cache, (beam[rows, pick] + rows * K).reshape(-1))
            if early_stopping is True:
                closed |= is_fin.all(1)
            else:  # can the best running beam still beat the worst finished hypothesis?
                length = L if early_stopping == "never" and length_penalty > 0 else step + 1
                best_possible = running_scores[:, 0] / length ** length_penalty
                closed |= is_fin.all(1) & (best_possible <= fin_scores.min(1).values)
            if bool(closed.all()):
                break
        best = fin[:, 0].tolist()
        hyps = [row[:n] for row, n in zip(best, fin_lens[:, 0].tolist(), strict=True)]
    return (hyps, fin_scores[:, 0].tolist()) if return_scores else hyps


def translate(
    model: nn.Module,
    input_ids: Sources,
    config: Seq2SeqGenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    return_scores: bool = False,
    **overrides: Any,
) -> Result:
    """Target ids per source row, without the decoder start token and the trailing eos/padding.

    ``input_ids`` (B, S) with ``attention_mask`` (B, S) (1 = token; inferred from the pad id when left out),
    or lists of ids. The options are ``config`` (a :class:`Seq2SeqGenerationConfig`), with any of its fields
    given as keywords overriding it: ``num_beams=1`` is greedy (:func:`greedy_decode`), more is
    :func:`beam_search`. ``return_scores`` adds each output's sum of log-probabilities / length ** length_penalty.

    >>> import bigmodels
    >>> model = bigmodels.create_model("transformer_mini")
    >>> len(translate(model, [[5, 6, 7], [8, 9]], max_new_tokens=4)[1]) <= 4
    True
    >>> beams = Seq2SeqGenerationConfig(num_beams=2, max_new_tokens=4)
    >>> len(translate(model, [[5, 6, 7]], beams, length_penalty=0.6))
    1
    """
    config = _configure(Seq2SeqGenerationConfig, config, overrides, "translate()", _CALL_OPTIONS)
    decode = greedy_decode if config.num_beams == 1 else beam_search
    return decode(model, input_ids, config, attention_mask=attention_mask, return_scores=return_scores)
