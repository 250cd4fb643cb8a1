"""Knowledge distillation: a task wrapper that trains any student from any teacher through the trainer
(``distill.teacher=DIR``; ``bigmodels.compress.distill`` loads a teacher for it outside the trainer).

The loss on a batch (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", sec. 2)::

    L = (1 - alpha) * L_hard(student, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
        + hidden_weight * MSE(W h_s, h_t) + attention_weight * KL(A_t || A_s) + embedding_weight * MSE(W_e e_s, e_t)

The T^2 factor keeps the soft term's gradients on the scale of the hard one's as T changes (sec. 2.1). With
``augment=k`` (text), the student also learns the teacher's soft targets, and the weighted intermediate terms
below, on k augmented copies of each batch (:func:`augment_tokens`: tokens masked, or the sentence cut to one of
its n-grams; Tang et al. 2019 sec. 3.2; TinyBERT's data augmentation, on which TinyBERT distils the intermediate
layers too): the teacher labels inputs it was not trained on, where its outputs carry more than the training
labels (on its own training sentences a fine-tuned teacher is nearly one-hot). The hidden
and attention terms transfer intermediate knowledge between uniformly mapped layers (student layer m reads teacher
layer m * L_t / L_s, as TinyBERT's g(m), Jiao et al. 2020): hidden states through a learned projection W when the
widths differ (TinyBERT eq. 7), and attention distributions as a KL divergence (MiniLM, Wang et al. 2020, eq. 4),
read through the :class:`~bigmodels.nn.attention.AttentionProbs` modules on the reference attention path. The
embedding term is TinyBERT's L_embd (eq. 10): the MSE between what enters each model's first block (its embedding
layer's output), through a learned W_e when the widths differ. The teacher is frozen
and in eval mode; evaluation stays the plain task (val metrics compare across runs).

    >>> import torch, bigmodels
    >>> from bigmodels.tasks import get_task
    >>> student, teacher = bigmodels.create_model("mlp_small"), bigmodels.create_model("mlp_small")
    >>> task = DistillationTask(get_task("image_classification"), teacher, student, temperature=2.0, alpha=0.5)
    >>> loss, logits = task.loss(student, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    >>> logits.shape
    torch.Size([4, 10])

In a recipe: ``distill: {teacher: runs/sst2_minilm, temperature: 2.0, alpha: 0.5}``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..errors import ConfigError, TrainingError
from ..models._contract import model_info
from ..nn.attention import AttentionProbs, attention_modules, reference_attention
from .base import IGNORE_INDEX, Task, call

__all__ = ["DistillationTask", "soft_target_loss", "attention_kl", "layer_map", "transformer_blocks",
           "check_teacher", "check_vocabulary", "augment_tokens"]

log = logging.getLogger("bigmodels.compress")

# what must agree between teacher and student: their output classes and their token vocabularies
_OUTPUT_SIZES = {"num_labels": "labels", "num_classes": "classes", "vocab_size": "tokens (vocabulary)",
                 "tgt_vocab_size": "target tokens", "src_vocab_size": "source tokens"}


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the rows of the last dim
    (positions where ``keep`` is False take no part).

    >>> z = torch.randn(3, 5)
    >>> float(soft_target_loss(z, z, 2.0))
    0.0
    """
    s = student.float().flatten(0, -2) / temperature  # (N, C)
    t = teacher.float().flatten(0, -2) / temperature
    if keep is not None:
        s, t = s[keep.flatten()], t[keep.flatten()]
    if s.shape[0] == 0:
        return s.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
    return kl * temperature**2


def attention_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions (B, nh, Tq, Tk), averaged over the rows; with
    other head counts, between the head-averaged maps. Masked keys (probability 0 in both) add nothing."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    log_s = student.float().clamp_min(1e-12).log().flatten(0, -2)  # (N, Tk)
    return F.kl_div(log_s, teacher.float().flatten(0, -2), reduction="batchmean")


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer each student layer learns from: uniform, the last onto the last (TinyBERT's g(m)).

    >>> layer_map(3, 6), layer_map(4, 4)
    ([1, 3, 5], [0, 1, 2, 3])
    """
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def transformer_blocks(model: nn.Module) -> list[str]:
    """The names of the repeated blocks that hold ``model``'s attention modules, in order: for each attention
    module, its nearest enclosing item of an ``nn.ModuleList`` / ``nn.Sequential`` (``layers.0``, ``blocks.3``)."""
    blocks: list[str] = []
    for name, _ in attention_modules(model):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if parts[i - 1].isdigit() and isinstance(model.get_submodule(".".join(parts[: i - 1])),
                                                     nn.ModuleList | nn.Sequential):
                block = ".".join(parts[:i])
                if block not in blocks:
                    blocks.append(block)
                break
    return blocks


def check_teacher(teacher: nn.Module, student: nn.Module, where: str = "the teacher") -> None:
    """Raise :class:`ConfigError` unless teacher and student solve the same task over the same classes and
    vocabulary sizes (soft targets compare their outputs position by position)."""
    t_info, s_info = model_info(teacher), model_info(student)
    if t_info.task != s_info.task:
        raise ConfigError(f"{where} ({t_info.name}) solves {t_info.task} but the student ({s_info.name}) solves "
                          f"{s_info.task}; distil from a teacher trained for the student's task")
    t_cfg, s_cfg = getattr(teacher, "config", None), getattr(student, "config", None)
    for key, what in _OUTPUT_SIZES.items():
        t_val, s_val = getattr(t_cfg, key, None), getattr(s_cfg, key, None)
        if t_val is not None and s_val is not None and t_val != s_val:
            raise ConfigError(
                f"{where} ({t_info.name}) has {t_val} {what} (model.{key}={t_val}) but the student ({s_info.name}) "
                f"has {s_val} (model.{key}={s_val}); soft targets need the same outputs: use a teacher trained on "
                f"the student's data and tokenizer, or set model.{key}={t_val}"
            )


def check_vocabulary(teacher_tokenizer, student_tokenizer, where: str) -> None:
    """Raise :class:`ConfigError` unless both tokenizers (when both are known) map the same tokens to the same
    ids: the same vocabulary size is not enough."""
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab != s_vocab:
        differ = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ConfigError(
            f"{where}'s tokenizer ({len(t_vocab)} tokens) and the student's data tokenizer ({len(s_vocab)} tokens) "
            f"differ (e.g. {differ}); tokenize the data with the teacher's tokenizer: data.tokenizer=<the teacher>"
        )


def augment_tokens(x: dict[str, torch.Tensor], *, mask_id: int | None, pad_id: int, mask_prob: float = 0.1,
                   ngram_prob: float = 0.25, max_n: int = 5,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """An augmented copy of a right-padded token batch (``input_ids``, ``attention_mask``, optional
    ``token_type_ids``), row by row, as Tang et al. 2019 (sec. 3.2) augment for distillation: with probability
    ``ngram_prob`` the sentence becomes one of its n-grams (n uniform in 1..``max_n``, the first and last token,
    [CLS] and [SEP], kept around it), else each other token becomes ``mask_id`` with probability ``mask_prob``.

    >>> x = {"input_ids": torch.tensor([[101, 7, 8, 9, 102, 0]]), "attention_mask": torch.tensor([[1] * 5 + [0]])}
    >>> y = augment_tokens(x, mask_id=103, pad_id=0, mask_prob=1.0, ngram_prob=0.0)
    >>> y["input_ids"].tolist(), y["attention_mask"].tolist()
    ([[101, 103, 103, 103, 102, 0]], [[1, 1, 1, 1, 1, 0]])
    """
    ids, mask = x["input_ids"], x["attention_mask"]
    types = x.get("token_type_ids")
    new_ids, new_mask = ids.clone(), mask.clone()
    new_types = types.clone() if types is not None else None
    lengths = mask.sum(1).tolist()
    rand = torch.rand(len(lengths), generator=generator).tolist()
    for b, length in enumerate(lengths):
        inner = length - 2  # the tokens between the first and the last
        if inner >= 2 and rand[b] < ngram_prob:
            n = int(torch.randint(1, min(max_n, inner) + 1, (), generator=generator))
            start = 1 + int(torch.randint(0, inner - n + 1, (), generator=generator))
            keep = torch.cat([torch.tensor([0]), torch.arange(start, start + n), torch.tensor([length - 1])])
            new_ids[b, : n + 2] = ids[b, keep]
            new_ids[b, n + 2 :] = pad_id
            new_mask[b, : n + 2], new_mask[b, n + 2 :] = 1, 0
            if new_types is not None:
                new_types[b, : n + 2] = types[b, keep]
                new_types[b, n + 2 :] = 0
        elif mask_id is not None and mask_prob > 0 and inner > 0:
            hit = torch.rand(inner, generator=generator) < mask_prob
            new_ids[b, 1 : length - 1] = ids[b, 1 : length - 1].masked_fill(hit.to(ids.device), mask_id)
    out = {**x, "input_ids": new_ids, "attention_mask": new_mask}
    if new_types is not None:
        out["token_type_ids"] = new_types
    return out


def _mask_token_id(*tokenizers: Any) -> int | None:
    for tokenizer in tokenizers:
        vocab = tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else {}
        for token in ("[MASK]", "<mask>"):
            if token in vocab:
                return int(vocab[token])
    return None


def _first_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else next(o for o in out if isinstance(o, torch.Tensor))


def _keep_mask(logits: torch.Tensor, y: Any) -> torch.Tensor | None:
    """Positions whose target is ignored (padding, unmasked tokens) take no part in the soft loss."""
    labels = y.get("labels") if isinstance(y, dict) else y
    if (isinstance(labels, torch.Tensor) and not labels.is_floating_point()
            and labels.shape == logits.shape[:-1] and labels.dim() > 1):
        return labels != IGNORE_INDEX
    return None


class _Output:
    """Stands in for the student when the wrapped task computes its hard loss: returns the output already
    computed (one student forward per step, whatever the task)."""

    training = False

    def __init__(self, out: Any) -> None:
        self.out = out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.out


class _Recorder:
    """Forward hooks that keep block outputs (hidden states) and attention maps during one forward."""

    def __init__(self, model: nn.Module, blocks: list[str], attention: bool,
                 embedding_block: str | None = None) -> None:
        self.hidden: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []
        self.embedding: torch.Tensor | None = None
        self._targets = [(model.get_submodule(b), self._keep_hidden) for b in blocks]
        probs = [c for _, m in attention_modules(model) for c in m.children() if isinstance(c, AttentionProbs)]
        self.n_maps = len(probs) if attention else 0
        self._targets += [(c, self._keep_map) for c in probs[: self.n_maps]]
        # the first block's input: the embedding layer's output, whatever the family calls it
        self._pre = [(model.get_submodule(embedding_block), self._keep_embedding)] if embedding_block else []

    def _keep_hidden(self, module, inputs, output) -> None:
        self.hidden.append(_first_tensor(output))

    def _keep_map(self, module, inputs, output) -> None:
        self.maps.append(inputs[0])  # the softmax weights before attention dropout (B, nh, Tq, Tk)

    def _keep_embedding(self, module, args, kwargs) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        if self.embedding is None and isinstance(first, torch.Tensor):
            self.embedding = first  # the first call only (a block called twice keeps its first input)

    @contextlib.contextmanager
    def recording(self) -> Iterator[_Recorder]:
        self.hidden, self.maps, self.embedding = [], [], None
        handles = [m.register_forward_hook(fn) for m, fn in self._targets]
        handles += [m.register_forward_pre_hook(fn, with_kwargs=True) for m, fn in self._pre]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


class DistillationTask(Task):
    """``base`` (the student's own task) plus soft targets from ``teacher``, and optionally hidden-state and
    attention-map transfer; metrics and counts are the base task's. ``trainable`` holds the parameters the
    task itself learns (the hidden-state projection when widths differ): the trainer optimises and saves them.
    """

    def __init__(self, base: Task, teacher: nn.Module, student: nn.Module, *, temperature: float = 2.0,
                 alpha: float = 0.5, hidden_weight: float = 0.0, attention_weight: float = 0.0,
                 embedding_weight: float = 0.0, augment: int = 0, mask_prob: float = 0.1, ngram_prob: float = 0.25,
                 mask_id: int | None = None,
                 teacher_name: str = "the teacher") -> None:
        DistillConfig(teacher_name, temperature=temperature, alpha=alpha, hidden_weight=hidden_weight,
                      attention_weight=attention_weight, embedding_weight=embedding_weight, augment=augment,
                      mask_prob=mask_prob, ngram_prob=ngram_prob)  # the same checks
        if augment and mask_prob > 0 and mask_id is None:
            raise ConfigError("distill.augment masks tokens with the tokenizer's mask token ([MASK] or <mask>), which "
                              "this tokenizer lacks; set distill.mask_prob=0 (n-grams only) or distill.augment=0")
        self.augment, self.mask_prob, self.ngram_prob, self.mask_id = int(augment), mask_prob, ngram_prob, mask_id
        self.pad_id = int(getattr(getattr(student, "config", None), "pad_token_id", None) or 0)
        check_teacher(teacher, student, teacher_name)
        self.base, self.teacher = base, teacher.eval().requires_grad_(False)
        self.name, self.unit, self.metric_names = base.name, base.unit, base.metric_names
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.hidden_weight, self.attention_weight = float(hidden_weight), float(attention_weight)
        self.embedding_weight = float(embedding_weight)
        self.trainable = nn.ModuleDict()
        self.pairs: list[tuple[int, int]] = []  # (student block, teacher block) of the transfer losses
        s_blocks = t_blocks = []
        if hidden_weight or attention_weight or embedding_weight:
            s_blocks, t_blocks = transformer_blocks(student), transformer_blocks(teacher)
            if not s_blocks or not t_blocks:
                who = model_info(student if not s_blocks else teacher).name
                raise ConfigError(
                    f"distill.hidden_weight / attention_weight / embedding_weight transfer between attention "
                    f"blocks, and {who} has none; set them to 0 (soft targets alone work for any model)")
            self.pairs = list(enumerate(layer_map(len(s_blocks), len(t_blocks))))
        self._student_rec = _Recorder(student, s_blocks if hidden_weight else [], bool(attention_weight),
                                      s_blocks[0] if embedding_weight else None)
        self._teacher_rec = _Recorder(teacher, t_blocks if hidden_weight else [], bool(attention_weight),
                                      t_blocks[0] if embedding_weight else None)
        d_s, d_t = (_width(student), _width(teacher)) if hidden_weight or embedding_weight else (0, 0)
        for key, weight in (("hidden_projection", hidden_weight), ("embedding_projection", embedding_weight)):
            if weight and d_s != d_t:  # TinyBERT's W_h / W_e (eqs. 7, 10): learned maps to the teacher's width
                device = next(student.parameters()).device
                with torch.random.fork_rng(devices=[]):  # its initialisation leaves the training RNG as it was
                    torch.manual_seed(0)
                    self.trainable[key] = nn.Linear(d_s, d_t, bias=False, device=device)

    @classmethod
    def from_config(cls, cfg: DistillConfig, base: Task, student: nn.Module, teacher: nn.Module, *,
                    teacher_tokenizer=None, tokenizer=None) -> DistillationTask:
        """Wrap ``base`` with the settings of ``cfg`` and the ``teacher`` loaded from ``cfg.teacher``;
        ``teacher_tokenizer`` (saved beside the teacher) and ``tokenizer`` (the student's data tokenizer) must
        agree token for token."""
        where = f"distill.teacher={cfg.teacher}"
        check_vocabulary(teacher_tokenizer, tokenizer, where)
        task = cls(base, teacher, student, temperature=cfg.temperature, alpha=cfg.alpha,
                   hidden_weight=cfg.hidden_weight, attention_weight=cfg.attention_weight,
                   embedding_weight=cfg.embedding_weight, augment=cfg.augment,
                   mask_prob=cfg.mask_prob, ngram_prob=cfg.ngram_prob,
                   mask_id=_mask_token_id(tokenizer, teacher_tokenizer), teacher_name=where)
        log.info("distilling from %s (%s, %d parameters): T=%g, alpha=%g, hidden %g, attention %g over layer "
                 "pairs %s, embeddings %g, %d augmented copies", cfg.teacher, model_info(teacher).name,
                 sum(p.numel() for p in teacher.parameters()), cfg.temperature, cfg.alpha, cfg.hidden_weight,
                 cfg.attention_weight, task.pairs or "-", cfg.embedding_weight, cfg.augment)
        return task

    # ---------------------------------------------------------------- the loss
    def losses(self, model: nn.Module, x: Any, y: Any) -> tuple[dict[str, torch.Tensor], Any]:
        """Each term of the loss by name (``hard``, ``soft``, ``hidden``, ``attention``, ``embedding``,
        ``augmented``), and the student's output. ``augmented`` is already weighted: the mean over the augmented
        copies of each copy's soft, hidden, attention and embedding terms (TinyBERT distils its intermediate layers
        on the augmented data too)."""
        out, t_out, terms = self._transfer(model, x)
        hard, _ = self.base.loss(_Output(out), x, y)
        logits, t_logits = _first_tensor(out), _first_tensor(t_out)
        terms = {"hard": hard, "soft": soft_target_loss(logits, t_logits, self.temperature, _keep_mask(logits, y)),
                 **terms}
        if self.augment:
            if not (isinstance(x, dict) and "input_ids" in x and "attention_mask" in x):
                raise ConfigError("distill.augment augments token batches (input_ids and attention_mask); this "
                                  "task's inputs are not: set distill.augment=0")
            copies = []
            for _ in range(self.augment):
                x_aug = augment_tokens(x, mask_id=self.mask_id, pad_id=self.pad_id, mask_prob=self.mask_prob,
                                       ngram_prob=self.ngram_prob)
                a_out, a_t_out, a_terms = self._transfer(model, x_aug)
                soft = soft_target_loss(_first_tensor(a_out), _first_tensor(a_t_out), self.temperature)
                copies.append(self.alpha * soft + self._intermediate(a_terms))
            terms["augmented"] = sum(copies) / len(copies)
        return terms, out

    def _transfer(self, model: nn.Module, x: Any) -> tuple[Any, Any, dict[str, torch.Tensor]]:
        """The student's and the teacher's outputs on ``x`` and the intermediate terms between them (``hidden``,
        ``embedding``, ``attention``: those with a weight)."""
        attend = reference_attention if self.attention_weight else _no_change
        with attend(model), self._student_rec.recording() as s_rec:
            out = call(model, x)
        with torch.no_grad(), attend(self.teacher), self._teacher_rec.recording() as t_rec:
            t_out = call(self.teacher, x)
        terms = {}
        if self.hidden_weight:
            terms["hidden"] = sum(self._projected_mse("hidden_projection", s_rec.hidden[i], t_rec.hidden[j])
                                  for i, j in self.pairs) / len(self.pairs)
        if self.embedding_weight:
            if s_rec.embedding is None or t_rec.embedding is None:
                raise TrainingError("the first block's input was not a tensor in one of the models; set "
                                    "distill.embedding_weight=0")
            terms["embedding"] = self._projected_mse("embedding_projection", s_rec.embedding, t_rec.embedding)
        if self.attention_weight:
            for rec, maps in ((self._student_rec, s_rec.maps), (self._teacher_rec, t_rec.maps)):
                if len(maps) != rec.n_maps:
                    raise TrainingError(f"{len(maps)} attention maps seen of {rec.n_maps}: an attention module "
                                        "skipped its AttentionProbs; set distill.attention_weight=0")
            s_maps, t_maps = _per_block(s_rec.maps, self.pairs), _per_block(t_rec.maps, self.pairs, teacher=True)
            terms["attention"] = sum(attention_kl(s, t) for s, t in zip(s_maps, t_maps, strict=True)) / len(s_maps)
        return out, t_out, terms

    def _intermediate(self, terms: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """The weighted sum of the intermediate terms in ``terms``."""
        return sum(getattr(self, f"{name}_weight") * terms[name] for name in ("hidden", "attention", "embedding")
                   if name in terms)

    def _projected_mse(self, projection: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """MSE between student states, through the learned ``projection`` when the widths differ, and the
        teacher's (TinyBERT eqs. 7 and 10)."""
        project = self.trainable[projection] if projection in self.trainable else nn.Identity()
        return F.mse_loss(project(_check_pair(student, teacher)).float(), teacher.float())

    def loss(self, model, x, y):
        terms, out = self.losses(model, x, y)
        loss = (1.0 - self.alpha) * terms["hard"] + self.alpha * terms["soft"] + self._intermediate(terms)
        if self.augment:
            loss = loss + terms["augmented"]
        return loss, out

    # ---------------------------------------------------------------- what the base task does
    def count(self, x, y):
        return self.base.count(x, y)

    def update(self, sums, loss, logits, y):
        self.base.update(sums, loss, logits, y)

    def finalize(self, sums):
        return self.base.finalize(sums)

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the task learns beside the student's (empty without a projection)."""
        return list(self.trainable.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.trainable.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.trainable.load_state_dict(state)


@contextlib.contextmanager
def _no_change(model: nn.Module) -> Iterator[nn.Module]:
    yield model


def _width(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model", "hidden_dim", "embed_dim"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise ConfigError(f"distill.hidden_weight needs the hidden width of {model_info(model).name}, whose config "
                      "names none (hidden_size, n_embd, d_model, hidden_dim); set distill.hidden_weight=0")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.shape[:-1] != teacher.shape[:-1]:
        raise TrainingError(f"student hidden states {tuple(student.shape)} and teacher's {tuple(teacher.shape)} "
                            "cover different positions (one model drops padding, the other not); set "
                            "distill.hidden_weight=0")
    return student


def _per_block(maps: list[torch.Tensor], pairs: list[tuple[int, int]], teacher: bool = False) -> list[torch.Tensor]:
    """The attention map of each paired block (the first attention module of a block: its self-attention)."""
    blocks = max(j if teacher else i for i, j in pairs) + 1
    per = len(maps) // blocks if blocks and len(maps) % blocks == 0 else 1
    return [maps[(j if teacher else i) * per] for i, j in pairs]
