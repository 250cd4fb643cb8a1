"""Decoding for any decoder-only language model: greedy, temperature, top-k, top-p, repetition penalty, stops.

Decoding is a function that takes a model. The model honours the decoder contract
(:class:`bigmodels.models._contract.Decoder`): ``model(ids, cache=c)`` returns logits (B, T, V) and
``model.new_cache()`` gives an empty decoding state (a :class:`~bigmodels.nn.KVCache` for GPT, the recurrent
state for the RNN/LSTM/GRU language models). The prompt runs through the model once (with ``logits_to_keep=1``
where the model's forward takes it, so the output layer reads only the last position); then each step feeds only
the newest token, and the cache carries everything before it.

Prompts of different lengths are left-padded (so every row's next token sits in the last column) and carry
an attention mask; positions count real tokens only, as Hugging Face does, so results match theirs. A model
whose forward takes no ``attention_mask`` (a recurrent one, which would read the padding as tokens) decodes
such a batch row by row, each row with a cache of its own::

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini").eval()
    >>> out = generate(model, [[5, 6, 7], [8, 9]], max_new_tokens=4, temperature=0, pad_token_id=0)
    >>> out.shape
    torch.Size([2, 7])

The options are a :class:`GenerationConfig`; keywords build or override one (``generate(model, ids, config,
temperature=0)``). Speed: ``cache="static"`` decodes with a preallocated :class:`~bigmodels.nn.StaticKVCache`
(the model's ``new_cache(batch_size=..., max_length=..., static=True)``), so every step has the same shapes, and
``compile=True`` compiles that one-token step with ``torch.compile(mode="reduce-overhead")``: on CUDA the whole
step replays as one CUDA graph. What compiling builds (the compiled step, static caches whose addresses the
graph keeps) lives in a :class:`Decoder` that its caller owns and passes back in, never in module state, so
concurrent callers share nothing by accident. Outputs are the dynamic cache's, token for token. On the CPU,
``Decoder(model, greedy_screen=True)`` also lets greedy steps of up to 4 rows (either cache, eager or compiled)
pick their token from a float16 copy of the output layer with a proven error bound, the few rows it cannot rule
out summed again in full precision (``bigmodels_cpu::screened_argmax``): the same tokens, and GPT-2's largest
matrix read at half its bytes each step (1.12x the compiled fp32 step, ``benchmarks/cpu_decode.md``).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..nn import kernels
from .sampling import apply_repetition_penalty, sample_next_token

__all__ = ["GenerationConfig", "Decoder", "generate", "stream", "pad_prompts", "apply_repetition_penalty", "CACHES",
           "CPU_COMPILE_OPTIONS"]

log = logging.getLogger(__name__)

Prompt = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]
CACHES = ("dynamic", "static")
# torch.compile options for the one-token step, by device type (read-only; a Decoder may be given its own).
# CUDA graphs ("reduce-overhead") replay a step with one launch; where a device has no options the static step
# runs uncompiled, with a logged note. The CPU has none by default: a compiled step there pays at one row and loses
# at several, so it is an explicit choice (CPU_COMPILE_OPTIONS).
_COMPILE_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"cuda": MappingProxyType({"mode": "reduce-overhead", "fullgraph": True})})
# The one-token step compiled by inductor on the CPU: ``Decoder(model, compile_options=CPU_COMPILE_OPTIONS)``.
# Measured on GPT-2 124M, fp32, 2 threads, prepare_for_cpu_decoding (column-major weights, which the compiled step
# multiplies with, on bigmodels_cpu::linear_f32 where it is built): batch 1 ~1.2x the eager step (the per-op overhead
# goes; the products are memory-bound either way), batch 8 ~0.8x eager, whose oneDNN-packed weights the compiled
# step cannot use (benchmarks/cpu_decode.md).
# No freezing: the weights stay inputs of the graph, so a model whose weights change decodes with the new ones.
# int8 (Int8DynamicLinear) compiles where its few-row products run on bigmodels_cpu::int8_linear (a registered
# operator; bigmodels.nn.kernels): 1.5x its eager step at batch 1 (benchmarks/cpu_decode.md, tenth session); its
# fbgemm-packed weights alone are opaque to torch.compile. Inductor builds C++ kernels on the first call: the
# machine needs a C++ compiler (g++ or clang), and compiling takes seconds.
CPU_COMPILE_OPTIONS: Mapping[str, Any] = MappingProxyType({"fullgraph": True})
_STATIC_MIN = 64  # compiled static caches: at least this long, else the next power of two (see static_length)


def static_length(length: int, context: int | None = None) -> int:
    """The slots of a compiled step's static cache for ``length`` tokens: the next power of two, at least 64, at
    most the model's ``context``. Nearby request lengths share one cache shape and so one graph (five at most for
    GPT-2's 1,024 positions: 64 to 1,024 slots; multiples of 256 made four), and the step, which attends over every
    slot, never reads more than twice the tokens it holds (multiples of 256 read 2.7x at GPT-2's 32 + 64 tokens).

    >>> static_length(96, 1024), static_length(20, 1024), static_length(600, 1024), static_length(1000, 1024)
    (128, 64, 1024, 1024)
    >>> static_length(30, 32)
    32
    """
    slots = max(_STATIC_MIN, 1 << (max(length, 1) - 1).bit_length())
    return min(context, slots) if context else slots


_STOP_CHECK_EVERY = 8  # generate() reads "has every row stopped?" from the device this often (stream: every step)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationConfig:
    """How :func:`generate` and :func:`stream` decode; checked when built.

    ``temperature=0`` is greedy; ``top_k`` / ``top_p`` filter the sampled distribution; ``repetition_penalty``
    is CTRL's (1.0 = none). A row ends at a token of ``stop_tokens`` or ``eos_token_id`` (kept), or once its new
    text contains one of ``stop_strings``; later steps pad it with ``pad_token_id`` (default: the eos id).
    ``seed`` (an int or a ``torch.Generator``) makes sampling reproducible. ``cache="static"`` preallocates the
    key/value cache; ``compile=True`` (static cache only) compiles the one-token step.

    >>> config = GenerationConfig(max_new_tokens=8, temperature=0, stop_tokens=[2])
    >>> config.stop_tokens, dataclasses.replace(config, temperature=0.7).temperature
    ((2,), 0.7)
    >>> GenerationConfig(top_p=1.5)
    Traceback (most recent call last):
    ...
    bigmodels.errors.ConfigError: top_p=1.5 must be in (0, 1] (or None to keep every token)
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    stop_strings: tuple[str, ...] = ()
    seed: int | torch.Generator | None = None
    cache: str = "dynamic"
    compile: bool = False

    def __post_init__(self) -> None:
        if not _whole(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens!r} must be a whole number >= 0")
        if not _number(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if self.top_k is not None and (not _whole(self.top_k) or self.top_k < 1):
            raise ConfigError(f"top_k={self.top_k!r} must be >= 1 (or None to keep every token)")
        if self.top_p is not None and (not _number(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p={self.top_p!r} must be in (0, 1] (or None to keep every token)")
        if not _number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty={self.repetition_penalty!r} must be > 0 (1.0 = none)")
        object.__setattr__(self, "stop_tokens", _token_ids("stop_tokens", self.stop_tokens))
        if self.eos_token_id is not None and not _whole(self.eos_token_id):
            object.__setattr__(self, "eos_token_id", _token_ids("eos_token_id", self.eos_token_id))
        if self.pad_token_id is not None and (not _whole(self.pad_token_id) or self.pad_token_id < 0):
            raise ConfigError(f"pad_token_id={self.pad_token_id!r} must be a token id (a whole number >= 0) or None")
        if isinstance(self.stop_strings, str) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ConfigError(f"stop_strings={self.stop_strings!r} must be a list of non-empty strings, e.g. "
                              "stop_strings=['\\n\\n']")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if not (self.seed is None or _whole(self.seed) or isinstance(self.seed, torch.Generator)):
            raise ConfigError(f"seed={self.seed!r} must be a whole number, a torch.Generator or None")
        if self.cache not in CACHES:
            raise ConfigError(f"cache={self.cache!r} is not valid; choose one of {', '.join(CACHES)}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile={self.compile!r} must be True or False")
        if self.compile and self.cache != "static":
            raise ConfigError("compile=True compiles one decoding step for every step, which needs the same shapes "
                              "each time: pass cache='static' too")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else eos


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, torch.Tensor)):
        raise ConfigError(f"{name}={value!r} must be a list of token ids, e.g. {name}=[2]")
    ids = tuple(int(v) if torch.is_tensor(v) else v for v in (value.tolist() if torch.is_tensor(value) else value))
    if not all(_whole(i) and i >= 0 for i in ids):
        raise ConfigError(f"{name}={value!r} must hold token ids (whole numbers >= 0)")
    return ids


def _configure(cls: type, config: Any, overrides: Mapping[str, Any], where: str, extra: Sequence[str] = ()) -> Any:
    """``config`` (an instance of the dataclass ``cls``, or None for its defaults) with ``overrides`` applied
    and checked; an unknown keyword fails with the list of valid ones."""
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise ConfigError(f"{where}: config must be a {cls.__name__}, got {type(config).__name__} {config!r}; pass "
                          f"options by keyword (e.g. max_new_tokens=...) or as {cls.__name__}(...)")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        hint = "; seed= takes a torch.Generator" if "generator" in unknown and "seed" in fields else ""
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}{hint}. Valid options: "
                          f"{', '.join([*fields, *extra])}")
    return dataclasses.replace(config, **overrides) if overrides else config


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


class Decoder:
    """What compiled decoding keeps between calls, owned by whoever creates it: for one model, the compiled
    one-token step (per device type) and a pool of static caches whose addresses that step was captured with.

    Pass the same Decoder to the calls that should reuse them (a server's requests, a benchmark's repeats);
    without one, each call builds its own and shares nothing. Its pool is locked, so threads may share one;
    two threads that each own a Decoder share nothing at all. ``compile_options`` are ``torch.compile``'s
    keyword arguments for every device (default: ``mode="reduce-overhead", fullgraph=True`` on CUDA, no
    compiling elsewhere; :data:`CPU_COMPILE_OPTIONS` compiles the CPU step with inductor). ``greedy_screen=True``:
    greedy steps (temperature 0, no repetition penalty) on the CPU, up to 4 rows, with either cache, pick their
    tokens through a float16 copy of the output layer, exact (:class:`_Screen`; built on first use, +half the
    layer's memory); sampling, penalties, wider batches and models whose output layer is not a float32 matrix
    decode from the logits as before. Such steps call ``model.forward_hidden``, not the model's forward: hooks on
    the model itself do not run for them (hooks on its layers do).

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini")
    >>> decoder = Decoder(model)
    >>> generate(model, [1, 2, 3], max_new_tokens=4, cache="static", compile=True, decoder=decoder).shape
    torch.Size([1, 7])
    """

    screen_max_rows = 4  # greedy_screen: the most rows a step may have (bigmodels_cpu::screened_argmax's)

    def __init__(self, model: nn.Module, *, compile_options: Mapping[str, Any] | None = None,
                 greedy_screen: bool = False) -> None:
        if not isinstance(greedy_screen, bool):
            raise ConfigError(f"Decoder(greedy_screen={greedy_screen!r}) must be True or False")
        self.model = model
        self.compile_options = None if compile_options is None else dict(compile_options)
        self.greedy_screen = greedy_screen
        self._compiled: dict[tuple[str, bool], Callable | None] = {}  # (device type, picks) -> step (None: eager)
        self._free: dict[tuple, list] = {}  # (B, L, dtype, device) -> static caches not in use
        self._screen: _Screen | None = None
        self._screen_for: tuple | None = None  # the model's modules and parameters the screen was found in
        self._lock = threading.Lock()

    def compiled_step(self, device: torch.device, picks: bool = False) -> Callable | None:
        """:func:`_decode_step` (``picks``: :func:`_pick_step`) compiled for ``device``'s type, or None (noted once)
        where it has no options."""
        with self._lock:
            if (device.type, picks) not in self._compiled:
                options = self.compile_options if self.compile_options is not None else (
                    _COMPILE_OPTIONS.get(device.type))
                if options is None and not any(key[0] == device.type for key in self._compiled):
                    hint = (" (to compile on the CPU, faster at batch 1: decoder=Decoder(model, "
                            "compile_options=CPU_COMPILE_OPTIONS))" if device.type == "cpu" else "")
                    log.warning("compile=True: no compiled decoding for %s by default; decoding with the static "
                                "cache, uncompiled%s", device.type, hint)
                step = _pick_step if picks else _decode_step
                self._compiled[device.type, picks] = None if options is None else torch.compile(step, **options)
            return self._compiled[device.type, picks]

    def screen(self, rows: int, device: torch.device) -> _Screen | None:
        """The output layer's float16 screen for exact greedy picks (``greedy_screen=True``), built on first use,
        again when the weight changes, and looked for again when the model's modules or parameters are not the
        ones it was found among (a layer swapped, quantized, pruned or given adapters since); None where it does
        not apply: off, not on the CPU, more rows than the kernel takes, kernels not built, or no float32 output
        layer found (see :class:`_Screen`)."""
        if not (self.greedy_screen and device.type == "cpu" and rows <= self.screen_max_rows and kernels.usable()):
            return None
        model = self.model
        layout = (tuple((id(m), type(m)) for m in model.modules()), tuple(map(id, model.parameters())))
        with self._lock:
            if layout != self._screen_for:
                self._screen, self._screen_for = _Screen.find(model), layout
            elif self._screen is not None:
                self._screen.refresh()
            return self._screen

    def take_cache(self, key: tuple):
        """A free static cache of ``key`` = (batch, length, dtype, device), emptied; else a new one (and, for
        its new addresses, one more compilation)."""
        with self._lock:
            free = self._free.get(key)
            cache = free.pop() if free else None
        if cache is not None:
            cache.reset()
            return cache
        B, length, dtype, device = key
        cache = self.model.new_cache(batch_size=B, max_length=length, static=True, dtype=dtype, device=device)
        for t in cache.tensors():
            torch._dynamo.mark_static_address(t)  # written in place: CUDA graphs keep the addresses, copy nothing
        return cache

    def give_back(self, key: tuple, cache) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(cache)


@dataclass
class _Plan:
    """A validated request: the padded prompt and the options."""

    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor | None  # (B, T), None when nothing is padded
    config: GenerationConfig
    masks: bool  # whether the model's forward takes an attention_mask (else padded rows decode one by one)
    last: Mapping[str, int]  # {"logits_to_keep": 1} where the forward takes it: the prompt's last logits only
    stop_ids: torch.Tensor  # (S,)
    pad_id: int | None
    decode: Callable[[list[int]], str] | None
    generator: torch.Generator | None


def _check_decoder(model: nn.Module) -> None:
    """A clear error for a model that is not a decoder (see the module docstring)."""
    name = type(model).__name__
    if hasattr(model, "encode") and hasattr(model, "decode"):
        raise ConfigError(f"{name} is an encoder-decoder: translate with bigmodels.infer.seq2seq.translate(model, "
                          "source_ids)")
    if not hasattr(model, "new_cache"):
        raise ConfigError(f"{name} cannot be decoded: a decoder gives next-token logits from model(ids, cache=c) "
                          "with c = model.new_cache() (GPT, the char_rnn / char_lstm / char_gru language models)")
    task = getattr(getattr(model, "info", None), "task", None)
    if task is not None and task != "language_modeling":
        raise ConfigError(f"{name} is a {task} model; generate continues text with a language model "
                          "(task language_modeling), e.g. gpt_mini or char_lstm")


def _plan(model: nn.Module, input_ids: Prompt, attention_mask: torch.Tensor | None, c: GenerationConfig,
          decode: Callable[[list[int]], str] | None, decoder: Decoder | None) -> _Plan:
    _check_decoder(model)
    if c.cache == "static":
        if "static" not in inspect.signature(model.new_cache).parameters:
            raise ConfigError(f"{type(model).__name__} has no static cache (its new_cache() takes no static=); "
                              "use cache='dynamic'")
    if decoder is not None and decoder.model is not model:
        raise ConfigError(f"the decoder was made for another model ({type(decoder.model).__name__} at "
                          f"{id(decoder.model):#x}); make one per model with Decoder(model)")
    if c.stop_strings and decode is None:
        raise ConfigError("stop_strings need decode=<a function from token ids to text>, e.g. tokenizer.decode")
    stops = [*c.stop_tokens, *c.eos_ids]
    pad_id = c.pad_token_id if c.pad_token_id is not None else (c.eos_ids[0] if c.eos_ids else None)

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
    if ids.size(0) > 1 and stops + list(c.stop_strings) and pad_id is None:
        raise ConfigError("rows of a batch stop at different steps; pass pad_token_id (or eos_token_id) to pad them")

    context = getattr(getattr(model, "config", None), "block_size", None)
    T, n = ids.size(1), c.max_new_tokens
    if context is not None and T + n > context:
        if T >= context:
            fix = f"shorten the prompt to fewer than {context} tokens"
        elif n >= context:
            fix = f"lower max_new_tokens to at most {context - T}"
        else:
            fix = f"shorten the prompt to at most {context - n} tokens or lower max_new_tokens to at most {context - T}"
        raise DataError(
            f"the prompt ({T} tokens) + max_new_tokens={n} = {T + n} exceeds the model's "
            f"context of {context} tokens (block_size); {fix}, or use a model with a longer context"
        )
    generator = c.seed if isinstance(c.seed, torch.Generator) or c.seed is None else (
        torch.Generator(device=device).manual_seed(c.seed))
    parameters = inspect.signature(model.forward).parameters
    masks = "attention_mask" in parameters
    last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    return _Plan(ids.to(device=device, dtype=torch.long), mask, c, masks, last,
                 torch.tensor(stops, dtype=torch.long, device=device), pad_id, decode, generator)


def _decode_step(model: nn.Module, cache, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One token per row through a static cache: ids (B, 1) -> next-token logits (B, V). The unit compiled."""
    return model(ids, attention_mask=mask, cache=cache)[:, -1].float()


def _pick_step(model: nn.Module, cache, ids: torch.Tensor, mask: torch.Tensor | None, qt: torch.Tensor,
               slack: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One greedy token per row through a static cache, the output layer screened: ids (B, 1) -> next ids (B, 1)."""
    hidden = model.forward_hidden(ids, attention_mask=mask, cache=cache)[:, -1]  # (B, C)
    return _screened_pick(hidden, (qt, slack, weight, bias))


def _screened_pick(hidden: torch.Tensor, screen: tuple) -> torch.Tensor:
    """The greedy tokens (B, 1) of final hidden states (B, C), through a :class:`_Screen`'s ``args()``."""
    return torch.ops.bigmodels_cpu.screened_argmax(hidden.float().contiguous(), *screen)


class _Screen:
    """A decoder's output layer W (V, C) (+ b) kept also as float16 for greedy picks that are exact:
    ``bigmodels_cpu::screened_argmax`` multiplies the final hidden state with the float16 copy (half the bytes of
    the float32 layer, which decoding streams from memory every step), bounds how far each logit can be from the
    float32 one (Cauchy-Schwarz on the rounding, ``kernels.screen``), and sums the rows that may be the largest
    again from W in double: the token is the argmax of the full-precision logits. The layer is found, not named:
    the 2-D float32 weight (a Linear's, or the embedding tied to it) whose product with ``forward_hidden`` gives
    the model's logits, checked on a short input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, vocab: int) -> None:
        self.weight, self.bias, self.vocab = weight, bias, vocab
        self._from: tuple = ()
        self.qt = self.slack = None
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the copy if the weight changed since (in place, or a new tensor; an inference tensor, made
        under ``torch.inference_mode``, keeps no version count: only a new tensor is seen)."""
        w = self.weight
        key = (None if w.is_inference() else w._version, w.data_ptr(), w.stride())
        if key != self._from:
            self.qt, self.slack = kernels.screen(w, self.vocab)
            self._from = key

    def args(self) -> tuple:
        return self.qt, self.slack, self.weight, None if self.bias is None else self.bias[: self.vocab]

    @classmethod
    @torch.no_grad()
    def find(cls, model: nn.Module) -> _Screen | None:
        if not hasattr(model, "forward_hidden"):
            return None
        try:
            ids = torch.arange(1, 5, device=next(model.parameters()).device)[None]  # (1, 4)
            hidden, logits = model.forward_hidden(ids)[0].float(), model(ids)[0].float()  # (4, C), (4, V)
        except Exception as e:  # noqa: BLE001 (an unusual model decodes as it did, without the screen)
            log.info("greedy_screen: %s's output layer could not be checked (%s); greedy steps read it whole",
                     type(model).__name__, e)
            return None
        V, C = logits.size(-1), hidden.size(-1)
        scale = float(logits.abs().max()) + 1e-6
        for module in model.modules():
            w, b = getattr(module, "weight", None), getattr(module, "bias", None)
            if not (isinstance(w, torch.Tensor) and w.dim() == 2 and w.dtype == torch.float32
                    and w.size(1) == C and w.size(0) >= V):
                continue
            b = b if isinstance(b, torch.Tensor) and b.dim() == 1 and b.numel() == w.size(0) else None
            if b is not None and b.dtype != torch.float32:
                continue
            guess = hidden @ w[:V].t() + (0 if b is None else b[:V])
            if torch.allclose(guess, logits, rtol=1e-4, atol=1e-4 * scale):
                return cls(w, b, V)
        log.info("greedy_screen: no float32 output layer of %s gives its logits from forward_hidden; greedy steps "
                 "read it whole", type(model).__name__)
        return None


def _greedy(c: GenerationConfig) -> bool:
    """Whether each token is the argmax of the model's logits (what a screened output layer can pick)."""
    return c.temperature == 0 and c.repetition_penalty == 1.0


# One decoding call's running state: prefill(prompt) -> logits (B, V), step(tokens (B,)) -> logits (B, V), close();
# where ``picks`` is true, pick(tokens (B,)) -> the next greedy tokens (B,) instead of step.


class _DynamicRun:
    """The model's growing cache (a :class:`~bigmodels.nn.KVCache`, a recurrent state); with left padding, the
    running attention mask grows by one column per step. With a caller's :class:`Decoder` whose greedy screen
    applies, greedy steps pick their tokens through it (eager)."""

    def __init__(self, model: nn.Module, p: _Plan, decoder: Decoder | None) -> None:
        self.model, self.mask, self.cache, self.last = model, p.mask, model.new_cache(), p.last
        self.screen = (decoder.screen(p.ids.size(0), p.ids.device)
                       if decoder is not None and _greedy(p.config) and hasattr(model, "forward_hidden") else None)
        self.picks = self.screen is not None

    def _forward(self, ids: torch.Tensor, **last: int) -> torch.Tensor:
        if self.mask is None:  # nothing padded: the plain contract, which recurrent models take too
            return self.model(ids, cache=self.cache, **last)[:, -1].float()  # (B, V)
        return self.model(ids, attention_mask=self.mask, cache=self.cache, **last)[:, -1].float()  # (B, V)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self._forward(ids, **self.last)  # the output layer on the last position only, where it can

    def _grow(self, nxt: torch.Tensor) -> None:
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(nxt.size(0), 1)], dim=1)  # (B, T + step + 1)

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        self._grow(nxt)
        return self._forward(nxt[:, None])

    def pick(self, nxt: torch.Tensor) -> torch.Tensor:
        self._grow(nxt)
        masked = {} if self.mask is None else {"attention_mask": self.mask}
        hidden = self.model.forward_hidden(nxt[:, None], cache=self.cache, **masked)[:, -1]  # (B, C)
        return _screened_pick(hidden, self.screen.args()).squeeze(-1)

    def close(self) -> None:
        pass


class _StaticRun:
    """A :class:`~bigmodels.nn.StaticKVCache` for prompt + new tokens: each step has the same shapes and inputs
    (the new tokens and one fixed mask), so a compiled step is captured once and replayed. Compiled, the step
    and the cache come from (and the cache goes back to) the call's :class:`Decoder`."""

    def __init__(self, model: nn.Module, p: _Plan, decoder: Decoder) -> None:
        B, T = p.ids.shape
        device, dtype = p.ids.device, next(model.parameters()).dtype
        self.model, self.decoder, self.pooled, self.last = model, decoder, None, p.last
        c = p.config
        self.screen = decoder.screen(B, device) if _greedy(c) else None
        self.picks = self.screen is not None
        self.pick_fn = ((decoder.compiled_step(device, picks=True) if c.compile else None) or _pick_step
                        ) if self.picks else None
        self.step_fn = (decoder.compiled_step(device) if c.compile and not self.picks else None) or _decode_step
        length = T + p.config.max_new_tokens
        compiled = (self.pick_fn if self.picks else self.step_fn) not in (_pick_step, _decode_step)
        if not compiled:
            self.cache = model.new_cache(batch_size=B, max_length=length, static=True, dtype=dtype, device=device)
        else:
            context = getattr(getattr(model, "config", None), "block_size", None)
            length = static_length(length, context) if context else length  # no declared context: as asked
            self.pooled = (B, length, dtype, device)
            self.cache = decoder.take_cache(self.pooled)
        # (B, L): the prompt's padding is 0, every later slot holds a real token once written (the cache itself
        # hides the slots not written yet), so one mask serves the prompt and every step
        self.mask = None if p.mask is None else torch.cat([p.mask, p.mask.new_ones(B, length - T)], dim=1)
        self.graphs = compiled and device.type == "cuda"

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, attention_mask=self.mask, cache=self.cache, **self.last)[:, -1].float()  # (B, V)

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self.step_fn(self.model, self.cache, nxt[:, None], self.mask)  # (B, V)
        return logits.clone() if self.graphs else logits  # a CUDA graph's output is overwritten by its next replay

    def pick(self, nxt: torch.Tensor) -> torch.Tensor:
        return self.pick_fn(self.model, self.cache, nxt[:, None], self.mask, *self.screen.args()).squeeze(-1)

    def close(self) -> None:
        if self.pooled is not None:
            self.decoder.give_back(self.pooled, self.cache)
            self.pooled = None


class _RowwiseRun:
    """Left-padded prompts for a model that takes no attention mask (a recurrent one would read the padding as
    tokens): each row runs its own tokens through a cache of its own, one forward per row a step."""

    picks = False

    def __init__(self, model: nn.Module, p: _Plan) -> None:
        self.model, self.mask = model, p.mask
        self.caches = [model.new_cache() for _ in range(p.ids.size(0))]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        rows = zip(ids, self.mask.bool(), self.caches, strict=True)
        return torch.cat([self.model(row[keep][None], cache=c)[:, -1] for row, keep, c in rows]).float()  # (B, V)

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        rows = zip(nxt, self.caches, strict=True)
        return torch.cat([self.model(token.view(1, 1), cache=c)[:, -1] for token, c in rows]).float()  # (B, V)

    def close(self) -> None:
        self.caches = []


@torch.no_grad()
def _steps(model: nn.Module, p: _Plan, decoder: Decoder | None, check_every: int = 1) -> Iterator[torch.Tensor]:
    """Yield each step's tokens (B,). Whether every row has stopped is read from the device every
    ``check_every`` steps (a sync), and only when there is a stop rule; rows that stopped yield padding."""
    c = p.config
    B = p.ids.size(0)
    stopping = p.stop_ids.numel() > 0 or bool(c.stop_strings)
    was_training = model.training
    model.eval()  # dropout off while decoding; restored when the generator finishes or is closed
    run = None
    try:
        if p.mask is not None and not p.masks:
            run = _RowwiseRun(model, p)
        elif c.cache == "static":
            run = _StaticRun(model, p, decoder if decoder is not None else Decoder(model))
        else:
            run = _DynamicRun(model, p, decoder)
        logits = run.prefill(p.ids)  # (B, V); None after a step that picked the tokens itself
        picked = None
        seen = None
        if c.repetition_penalty != 1.0:  # tokens already in each row (padding excluded): (B, V)
            counts = torch.zeros_like(logits, dtype=torch.long)
            seen = counts.scatter_add_(1, p.ids, torch.ones_like(p.ids) if p.mask is None else p.mask) > 0
        done = torch.zeros(B, dtype=torch.bool, device=p.ids.device)
        new: list[list[int]] = [[] for _ in range(B)]
        for step in range(c.max_new_tokens):
            if logits is None:
                nxt = picked
            else:
                if seen is not None:
                    logits = apply_repetition_penalty(logits, seen, c.repetition_penalty)
                nxt = sample_next_token(logits, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                                        generator=p.generator).squeeze(-1)  # (B,)
            if stopping and p.pad_id is not None:
                nxt = nxt.masked_fill(done, p.pad_id)  # finished rows only pad
            yield nxt
            if stopping:
                done |= torch.isin(nxt, p.stop_ids)
                if c.stop_strings:
                    for row, token in enumerate(nxt.tolist()):
                        if not done[row]:
                            new[row].append(token)
                            if any(s in p.decode(new[row]) for s in c.stop_strings):
                                done[row] = True
                if (step + 1) % check_every == 0 and bool(done.all()):
                    return
            if step == c.max_new_tokens - 1:
                return
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            if run.picks:  # greedy through the screened output layer: the tokens themselves
                picked, logits = run.pick(nxt), None
            else:
                logits = run.step(nxt)
    finally:
        if run is not None:
            run.close()
        model.train(was_training)


_CALL_OPTIONS = ("attention_mask", "decode", "decoder")


def stream(
    model: nn.Module,
    input_ids: Prompt,
    config: GenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    decode: Callable[[list[int]], str] | None = None,
    decoder: Decoder | None = None,
    **overrides: Any,
) -> Iterator[torch.Tensor]:
    """Like :func:`generate`, but yield each step's new tokens (B,) as soon as they are chosen.

    The arguments are checked at the call, before the first token::

        for tokens in stream(model, [ids], temperature=0.8, seed=0):
            print(tokenizer.decode(tokens.tolist()), end="", flush=True)
    """
    config = _configure(GenerationConfig, config, overrides, "stream()", _CALL_OPTIONS)
    plan = _plan(model, input_ids, attention_mask, config, decode, decoder)
    return _steps(model, plan, decoder)


def generate(
    model: nn.Module,
    input_ids: Prompt,
    config: GenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    decode: Callable[[list[int]], str] | None = None,
    decoder: Decoder | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """Continue prompts by up to ``max_new_tokens`` tokens -> LongTensor (B, T + new), prompts included.

    ``input_ids``: a (B, T) tensor (with ``attention_mask`` for left padding), one list of ids, or a list of
    lists (left-padded here with :func:`pad_prompts`). The options are ``config`` (a :class:`GenerationConfig`),
    with any of its fields given as keywords overriding it. ``decode`` (token ids -> text, e.g.
    ``tokenizer.decode``) is needed by ``stop_strings``. ``decoder``: a :class:`Decoder` kept by the caller, so
    that compiled decoding reuses its compiled step and static caches from call to call (without one,
    ``compile=True`` compiles for this call alone).
    Decoding stops when every row has ended; the model's training mode is restored afterwards.

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini")
    >>> generate(model, [1, 2, 3], max_new_tokens=5, seed=0).shape
    torch.Size([1, 8])
    >>> greedy = GenerationConfig(max_new_tokens=5, temperature=0, cache="static")
    >>> generate(model, [1, 2, 3], greedy).shape
    torch.Size([1, 8])
    >>> generate(bigmodels.create_model("char_lstm"), [[1, 2, 3], [4]], greedy, cache="dynamic", pad_token_id=0).shape
    torch.Size([2, 8])
    """
    config = _configure(GenerationConfig, config, overrides, "generate()", _CALL_OPTIONS)
    plan = _plan(model, input_ids, attention_mask, config, decode, decoder)
    every = 1 if config.stop_strings else _STOP_CHECK_EVERY
    steps = list(_steps(model, plan, decoder, check_every=every))
    new = torch.stack(steps, dim=1) if steps else plan.ids[:, :0]  # (B, new)
    if every > 1 and plan.stop_ids.numel() and new.size(1):
        # stops were read every few steps: drop the steps after the one where every row had stopped
        stopped = (torch.isin(new, plan.stop_ids).cumsum(dim=1) > 0).all(dim=0)  # (new,)
        if bool(stopped.any()):
            new = new[:, : int(stopped.int().argmax()) + 1]
    return torch.cat([plan.ids, new], dim=1)  # (B, T + new)
