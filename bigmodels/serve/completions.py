"""Completions: prompts x ``n`` choices decoded together by :func:`bigmodels.infer.generate.stream`, each request
with decoding state of its own (its caches, its random generator; no compiled :class:`Decoder` is shared). What
requests do share, on purpose and read-only, is the server's greedy screen (:func:`greedy_decoder`): greedy
requests of up to 4 choices on the CPU pick each token through a float16 copy of the output layer, exactly.

:func:`plan_completion` checks a request against the model (tokens, context, options) on the event loop and
raises a 400 before any work starts; :func:`run_completion` decodes in a worker thread and reports each choice's
new text as it is decided (``on_text(index, text)``), a stop string held back until it is known not to start
one, and stops early when ``cancel`` is set (a timeout, a client gone).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import BigModelsError
from ..infer.generate import Decoder, GenerationConfig, stream
from ..infer.pipelines import TextGenerationPipeline
from .limits import check_context
from .schemas import APIError, CompletionRequest

__all__ = ["CompletionPlan", "ChoiceState", "plan_completion", "run_completion", "greedy_decoder"]


@dataclass
class ChoiceState:
    """One choice as it decodes: its token ids, its text so far, how much of it was reported, why it ended."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    reported: int = 0
    finish_reason: str | None = None


@dataclass
class CompletionPlan:
    prompts: list[str]
    prompt_ids: list[list[int]]  # one row per choice: prompt i's ids repeated n times
    config: GenerationConfig
    stops: tuple[str, ...]
    echo: bool
    n: int

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompt_ids[::self.n])


def plan_completion(pipe: TextGenerationPipeline, request: CompletionRequest, *, context: int | None,
                    max_rows: int) -> CompletionPlan:
    """The request checked and tokenized; a 400 :class:`APIError` names what is wrong."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
    if not prompts:
        raise APIError(400, "prompt is an empty list; give a text or a list of texts to complete", param="prompt")
    rows = len(prompts) * request.n
    if rows > max_rows:
        raise APIError(400, f"{len(prompts)} prompts x n={request.n} = {rows} completions exceed the server's "
                            f"--max-batch of {max_rows}; send fewer prompts or a smaller n per request", param="n")
    stops = () if request.stop is None else (request.stop,) if isinstance(request.stop, str) else tuple(request.stop)
    if len(stops) > 4 or not all(stops):
        raise APIError(400, f"stop={list(stops)!r} must be up to 4 non-empty strings", param="stop")
    ids = []
    for i, prompt in enumerate(prompts):
        try:
            ids.append(pipe.preprocess(prompt))
        except BigModelsError as e:
            which = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            raise APIError(400, f"{which}: {e}", param="prompt") from None
    max_tokens = 16 if request.max_tokens is None else request.max_tokens
    longest = max(len(x) for x in ids)
    check_context(longest, max_tokens, context, "the prompt" if len(prompts) == 1 else "the longest prompt")
    tok = pipe.tokenizer
    seed = request.seed if request.seed is not None else secrets.randbits(63)  # a request's own random stream
    try:
        config = GenerationConfig(
            max_new_tokens=max_tokens, temperature=request.temperature, top_k=request.top_k,
            top_p=None if request.top_p >= 1.0 else request.top_p, repetition_penalty=request.repetition_penalty,
            eos_token_id=tok.eos_id,
            pad_token_id=tok.pad_id if tok.pad_id is not None else tok.eos_id if tok.eos_id is not None else 0,
            stop_strings=stops, seed=seed)
    except BigModelsError as e:
        raise APIError(400, str(e)) from None
    return CompletionPlan(prompts, [x for x in ids for _ in range(request.n)], config, stops, request.echo,
                          request.n)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may still become a stop string (or finish a character split
    between byte-level tokens): not reported yet."""
    if text.endswith("\ufffd"):
        return 1
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def greedy_decoder(pipe: TextGenerationPipeline) -> Decoder | None:
    """A :class:`Decoder` that holds only the greedy screen of ``pipe``'s model (``greedy_screen=True``; no
    compiled step, no static cache: completions decode with the dynamic cache), for every request to share; None
    for a model off the CPU or not in PyTorch. The first greedy request builds the screen (half the output layer's
    memory)."""
    model = pipe.model
    first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if first is None or first.device.type != "cpu":  # an ONNX Runtime session, or a model on a GPU
        return None
    return Decoder(model, greedy_screen=True)


def run_completion(pipe: TextGenerationPipeline, plan: CompletionPlan, *, on_text: Callable[[int, str], None],
                   cancel: threading.Event, decoder: Decoder | None = None) -> list[ChoiceState]:
    """Decode every choice (in a worker thread). ``on_text(index, new_text)`` hears each piece of a choice's
    text as soon as it is final; returns the choices' final states. A set ``cancel`` stops decoding between
    steps (the choices unfinished then have no finish reason). ``decoder``: the server's :func:`greedy_decoder`."""
    tok, model = pipe.tokenizer, pipe.model
    config = plan.config
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(config.seed)
    states = [ChoiceState() for _ in plan.prompt_ids]
    eos = tok.eos_id
    steps = stream(model, plan.prompt_ids, config, seed=generator, decode=tok.decode, decoder=decoder)
    try:
        with torch.inference_mode():
            for step in steps:
                if cancel.is_set():
                    return states
                for row, token in enumerate(step.tolist()):
                    state = states[row]
                    if state.finish_reason is not None:
                        continue
                    state.tokens.append(token)
                    if eos is not None and token == eos:
                        state.finish_reason = "stop"
                        state.text = tok.decode(state.tokens[:-1])
                    else:
                        state.text = tok.decode(state.tokens)
                        cut = min((i for i in (state.text.find(s) for s in plan.stops) if i >= 0), default=-1)
                        if cut >= 0:
                            state.finish_reason, state.text = "stop", state.text[:cut]
                    _report(state, row, plan.stops, on_text)
    finally:
        steps.close()
    for row, state in enumerate(states):
        if state.finish_reason is None:
            state.finish_reason = "length"
            _report(state, row, plan.stops, on_text)
    return states


def _report(state: ChoiceState, row: int, stops: tuple[str, ...], on_text: Callable[[int, str], None]) -> None:
    end = len(state.text) if state.finish_reason is not None else len(state.text) - _held_back(state.text, stops)
    if end > state.reported:
        on_text(row, state.text[state.reported:end])
        state.reported = end
