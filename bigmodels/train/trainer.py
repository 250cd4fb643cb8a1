"""The training loop every family uses.

    >>> from bigmodels import Trainer, resolve_run_config
    >>> cfg = resolve_run_config(None, ["model=mlp_small", "train.epochs=1", "train.out_dir=/tmp/bm-doc"])
    >>> summary = Trainer(cfg).fit()          # doctest: +SKIP
    >>> summary["status"], summary["val"]["accuracy"]    # doctest: +SKIP

What it does, in order of a step: fetch the next batch (a resumable, seeded order, sharded over
data-parallel processes), augment it on the device with a checkpointed generator (transforms, then
mixup/CutMix into soft targets), [channels-last], forward under autocast,
backward (gradient accumulation without reducing the first micro-batches), unscale + clip, optimizer and
scheduler step. Around the steps: non-finite loss detection, JSONL metrics and a progress bar, evaluation with
early stopping and best-checkpoint selection, atomic checkpoints, and a Ctrl-C that saves and exits cleanly.

The trainer knows no model family: data parallelism is a strategy from :mod:`.parallel` (DDP over several
processes), pretrained weights load through :func:`bigmodels.io.load_matching`, and code that runs at fixed
points of the loop is a :class:`~.callbacks.Callback` (``Trainer(cfg, callbacks=[...])``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig, to_dict
from ..data import DataBundle, build_data
from ..data.batching import iterate_batches, to_device
from ..data.sampler import ResumableSampler
from ..errors import CheckpointError, ConfigError, TrainingError
from ..evaluate.loop import autocast, evaluate_model
from ..io import load_matching, saved_tokenizer
from ..models._contract import model_info
from ..registry import create_model, get_spec
from ..tasks import Task, better, get_task
from .callbacks import Callback, TimeBudget
from .checkpoint import CheckpointManager
from .distributed import DistInfo, all_reduce_max, all_reduce_mean, any_flag, barrier, init_distributed
from .logs import MetricsLog, plot_history
from .mixing import MixUpCutMix
from .optim import build_optimizer, build_scheduler
from .parallel import DataParallel, data_parallel

__all__ = ["Trainer", "build_model_for_data", "check_model_fits_data", "resolve_device", "STOP_REASONS"]

log = logging.getLogger("bigmodels.train")

# why a run may stop before its last step, in the order the processes settle a disagreement (the last wins)
STOP_REASONS = ("stopped", "time_limit", "early_stopped", "interrupted")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA GPU is visible; use train.device=cpu (or auto)")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def build_model_for_data(
    name: str, model_args: dict[str, Any], data: DataBundle, init: str | None = None
) -> nn.Module:
    """Registry model ``name`` shaped for ``data`` (input size, classes, vocabulary), then the user's args;
    with ``init``, the weights of that pretrained model wherever names and shapes match (a new head starts
    from its initialisation)."""
    spec = get_spec(name)
    fields = {f.name for f in dataclasses.fields(spec.config)}
    implied = {k: v for k, v in data.model_args.items() if k in fields}
    model = create_model(name, **{**implied, **model_args})
    if model_info(model).task != data.task:
        raise ConfigError(
            f"model {name!r} solves {model_info(model).task} but the data is {data.task}; pick a model for that task "
            f"(`bigmodels models --task {data.task}`)"
        )
    check_model_fits_data(model, data)
    if init is not None:
        _load_pretrained(model, init)
    return model


# what the data's labels and tokens need of the model: a head with one output per class (label), and embedding
# tables with a row for every token id the data's tokenizer produces (more rows do no harm)
_LABEL_COUNTS = {"num_classes": ("classes", "class"), "num_labels": ("labels", "label")}
_TOKEN_COUNTS = {"vocab_size": "tokens", "src_vocab_size": "source tokens", "tgt_vocab_size": "target tokens"}
# the data's sequence lengths (its meta) -> the model config's number of positions
_CONTEXTS = {"block_size": "block_size", "max_length": "max_position_embeddings"}


def check_model_fits_data(model: nn.Module, data: DataBundle) -> None:
    """Raise :class:`ConfigError` unless ``model``'s head has one output per class (label) of ``data`` and its
    vocabularies hold every token id of the data's tokenizer; a mismatch would otherwise surface mid-training
    as an index error ("target 7 is out of bounds").

    >>> import bigmodels
    >>> from bigmodels.data import build_data
    >>> check_model_fits_data(bigmodels.create_model("mlp_small", num_classes=3), build_data("digits"))
    Traceback (most recent call last):
    bigmodels.errors.ConfigError: model.num_classes=3 but the data has 10 classes: ...
    """
    config = getattr(model, "config", None)
    for key, (what, one) in _LABEL_COUNTS.items():
        want, have = data.model_args.get(key), getattr(config, key, None)
        if want is not None and have is not None and have != want:
            raise ConfigError(
                f"model.{key}={have} but the data has {want} {what}: the head needs one output per {one}; "
                f"drop model.{key} (the data sets it) or set model.{key}={want}"
            )
    for key, what in _TOKEN_COUNTS.items():
        want, have = data.model_args.get(key), getattr(config, key, None)
        if want is not None and have is not None and have < want:
            raise ConfigError(
                f"model.{key}={have} but the data's tokenizer has {want} {what}: the embedding table needs a row "
                f"for each; drop model.{key} (the data sets it) or set model.{key}={want} or more"
            )
    for key, positions in _CONTEXTS.items():  # every sequence of the data must fit the model's positions
        want, have = data.meta.get(key), getattr(config, positions, None)
        if want is not None and have is not None and want > have:
            raise ConfigError(
                f"data.{key}={want} is longer than the model's context of {have} positions (model.{positions}); "
                f"set data.{key}={have} or less, or (training from scratch) model.{positions}={want}"
            )


def _check_out_dir(path: str) -> Path:
    """Check that ``train.out_dir`` can be created and written, before anything heavy is loaded: create it, write
    a file in it, then remove what the check created (a run refused later on leaves no empty folder behind)."""
    out = Path(path)
    fix = "give a directory you can write, e.g. train.out_dir=runs/NAME"
    created: list[Path] = []
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"train.out_dir={path} is not a directory (a file or device is there); {fix}")
        created = [p for p in (out, *out.parents) if not p.exists()]
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test."):
            pass
    except OSError as e:
        raise ConfigError(f"train.out_dir={path} is not a writable directory ({e.strerror or e}); {fix}") from None
    finally:
        for p in created:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
    return out


def _check_init(init: str) -> None:
    """Say first when ``init=`` names a local path that does not exist (before the data loads, before a hub
    lookup of a name that only looks like owner/name)."""
    local = Path(init).expanduser()
    if local.exists():
        return
    fix = ("pass a saved model directory, a training run (runs/NAME), or a Hugging Face hub name "
           "(e.g. sentence-transformers/all-MiniLM-L6-v2)")
    from ..registry import list_models

    if init in list_models():
        fix = (f"{init!r} is a model name, not weights: model={init} builds it with random weights; for trained "
               "weights, " + fix)
    parts = Path(init).parts
    hub_shaped = len(parts) == 2 and not local.is_absolute() and not init.startswith((".", "~"))
    if not hub_shaped or Path(parts[0]).is_dir():  # runs/x with a local runs/ folder: a local path
        raise ConfigError(f"init={init}: no such file or directory ({local.absolute()}); {fix}")
    from ..io import resolve_checkpoint

    try:
        resolve_checkpoint(init)
    except CheckpointError as e:
        reason = " ".join(str(e).split())  # one line, whatever the hub client's message holds
        raise ConfigError(f"init={init}: no such local path ({local.absolute()}), and as a Hugging Face hub name: "
                          f"{reason}") from None


def _build_mixing(cfg: RunConfig, data: DataBundle) -> MixUpCutMix | None:
    tc = cfg.train
    if not (tc.mixup or tc.cutmix):
        return None
    if data.task != "image_classification" or "num_classes" not in data.model_args:
        raise ConfigError(
            f"train.mixup={tc.mixup} / train.cutmix={tc.cutmix} mix images and their labels, for image "
            f"classification only; data {cfg.data.name!r} is {data.task}: set both to 0"
        )
    return MixUpCutMix(data.model_args["num_classes"], mixup_alpha=tc.mixup, cutmix_alpha=tc.cutmix,
                       prob=tc.mix_prob, switch_prob=tc.mix_switch_prob)


def _data_generator(dataset) -> torch.Generator | None:
    """A dataset that draws its own randomness per batch (masked LM) keeps it in ``.generator``."""
    g = getattr(dataset, "generator", None)
    return g if isinstance(g, torch.Generator) else None


def _data_tokenizer(cfg: RunConfig):
    """data.tokenizer (a file, directory or hub name; or "bpe:N", trained on the data), else init's tokenizer."""
    spec = cfg.data.tokenizer
    if spec is None:
        return saved_tokenizer(cfg.init) if cfg.init is not None else None
    if spec.startswith("bpe:"):
        return spec
    from ..io import load_tokenizer  # a tokenizer path, or anything bigmodels.load reads (a run: its checkpoint)

    return load_tokenizer(spec)


def _load_pretrained(model: nn.Module, init: str) -> None:
    fresh = load_matching(model, init)
    log.info("init from %s: %d tensors loaded, %d new%s", init, len(model.state_dict()) - len(fresh), len(fresh),
             f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else "")


def _lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from ..nn.lora import lora_state_dict

    return lora_state_dict(model)


def _merged(model: nn.Module) -> nn.Module:
    from ..nn.lora import merged_copy

    return merged_copy(model)


class _StopRequest:
    """SIGINT -> finish the current step, save, exit. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort at once)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    """Train ``cfg.model`` on ``cfg.data``; ``model`` / ``data`` may be given to skip building them.

    ``callbacks`` run at fixed points of :meth:`fit` (see :mod:`bigmodels.train.callbacks`); ``train.max_time``
    adds a :class:`~.callbacks.TimeBudget` before them.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        model: nn.Module | None = None,
        data: DataBundle | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg = cfg
        tc = cfg.train
        self.dist: DistInfo = init_distributed("cuda" if tc.device.startswith("cuda") or (
            tc.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(tc.device, self.dist.local_rank)
        self.precision = tc.precision
        if tc.precision == "fp16" and self.device.type != "cuda":
            log.warning("train.precision=fp16 needs a CUDA GPU; training in fp32 on %s instead", self.device)
            self.precision = "fp32"
        # the settings that would only fail after the data has loaded are checked first (the output directory by
        # the process that writes it)
        self.out_dir = _check_out_dir(tc.out_dir) if self.dist.is_main else Path(tc.out_dir)
        if cfg.init is not None:
            _check_init(cfg.init)
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        self.data = data or build_data(cfg.data, tokenizer=_data_tokenizer(cfg))
        # the training objective (label smoothing, soft targets) and the evaluation task (plain cross-entropy on
        # hard labels, so val metrics stay comparable across settings) are one object when they agree
        self.task: Task = get_task(self.data.task, self.data.meta, label_smoothing=tc.label_smoothing)
        self.eval_task: Task = get_task(self.data.task, self.data.meta) if tc.label_smoothing else self.task
        self._compiled: tuple[nn.Module | None, Callable | None] = (None, None)  # (model, its loss step)
        self.mixing = _build_mixing(cfg, self.data)
        self.model = model if model is not None else build_model_for_data(
            cfg.model, cfg.model_args, self.data, cfg.init
        )
        check_model_fits_data(self.model, self.data)
        # with lora.rank (or a model given with adapters): low-rank adapters, and only they (and heads) train
        self.lora = getattr(self.model, "lora_report", None)
        if cfg.lora.rank:
            from ..nn.lora import add_lora_

            lc = cfg.lora
            self.lora = add_lora_(self.model, lc.targets, lc.rank, lc.alpha, lc.dropout, train_modules=lc.train_modules)
        self.model.to(self.device)
        if tc.channels_last:  # converts the 4-D (conv) weights only; inputs follow in _train_step
            self.model.to(memory_format=torch.channels_last)
        if cfg.distill.teacher is not None:  # the training loss learns from a teacher too; eval_task stays plain
            from ..io import load
            from ..tasks.distill import DistillationTask

            with torch.random.fork_rng(devices=[]):  # building the teacher draws weights, not from training's RNG
                teacher = load(cfg.distill.teacher, map_location=self.device)
            self.task = DistillationTask.from_config(cfg.distill, self.task, self.model, teacher,
                                                     teacher_tokenizer=saved_tokenizer(cfg.distill.teacher),
                                                     tokenizer=self.data.tokenizer)
        self._check_monitor()
        n_train = len(self.data.train)
        if n_train < cfg.data.batch_size:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is larger than the training set ({n_train} items); lower it"
            )
        lengths = getattr(self.data.train, "lengths", None) if cfg.data.group_by_length else None
        if cfg.data.group_by_length and lengths is None:
            raise ConfigError(f"data.group_by_length needs a text data set with per-item lengths; "
                              f"{cfg.data.name!r} has none: drop the option")
        self.sampler = ResumableSampler(
            n_train, cfg.data.batch_size, shuffle=True, seed=cfg.data.seed, drop_last=True,
            rank=self.dist.rank, world_size=self.dist.world_size, lengths=lengths,
        )
        steps_per_epoch = max(1, len(self.sampler) // tc.grad_accum)
        self.total_steps = tc.steps if tc.steps is not None else (tc.epochs or 1) * steps_per_epoch
        if tc.steps is None and tc.epochs is None:  # a pure time budget
            self.total_steps = sys.maxsize
        self.steps_per_epoch = steps_per_epoch
        # wrapped before the optimizer is built: a sharding strategy replaces the parameters it will update
        self.parallel: DataParallel = data_parallel(self.dist, self.device)
        self.train_module: nn.Module | None = self.parallel.wrap(self.model)  # what forward/backward run through
        self.optimizer = build_optimizer(self.model, cfg.optim)
        # a task that learns parameters of its own (distillation's hidden-state projection) trains them alongside
        self.task_module: nn.Module | None = getattr(self.task, "trainable", None)
        if self.task_module is not None and len(list(self.task_module.parameters())):
            if self.dist.world_size > 1:
                raise ConfigError("distill.hidden_weight / embedding_weight between models of different widths learn "
                                  "projections that data parallelism does not synchronise; train on one process or "
                                  "set them to 0")
            self.optimizer.add_param_group({"params": list(self.task_module.parameters()),
                                            "weight_decay": cfg.optim.weight_decay})
        sched_total = self.total_steps if self.total_steps != sys.maxsize else 10**9
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, sched_total)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.aug_generator = torch.Generator().manual_seed(tc.seed + 7919 * (self.dist.rank + 1))
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", keep_last=tc.keep_last)
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=self.dist.is_main)
        bad = [c for c in callbacks if not isinstance(c, Callback)]
        if bad:
            raise ConfigError(f"callbacks must be Callback instances (bigmodels.train.callbacks), got {bad!r}; "
                              "subclass Callback and override its on_* methods")
        self.callbacks: list[Callback] = [*([TimeBudget(tc.max_time)] if tc.max_time is not None else []),
                                          *callbacks]
        self.train_seconds = 0.0  # seconds spent in training steps by the current fit() call
        self._stop_reason: str | None = None
        # progress and counters (all restored on resume)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.bad_evals = 0
        self.history: list[dict[str, Any]] = []
        self.last_eval_step = -1
        self.last_saved_step = -1
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._resume_or_start()

    # ------------------------------------------------------------------ set-up
    def _check_monitor(self) -> None:
        names = [f"val_{m}" for m in self.task.metric_names]
        if self.cfg.train.monitor not in names:
            raise ConfigError(
                f"train.monitor={self.cfg.train.monitor!r} is not a metric of {self.task.name}; choose one of "
                f"{', '.join(names)}"
            )

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best": self.best, "bad_evals": self.bad_evals, "last_eval_step": self.last_eval_step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "rng_augment": self.aug_generator.get_state(),
            "rng_data": data_rng.get_state() if (data_rng := _data_generator(self.data.train)) else None,
            "world_size": self.dist.world_size,
            "task": self.task_module.state_dict() if self.task_module is not None else None,
            "lora": _lora_state(self.model) if self.lora is not None else None,
        }

    def _resume_or_start(self) -> None:
        latest = self.ckpt.resume_point()  # raises, touching nothing, when checkpoints exist but none is usable
        if self.dist.is_main:
            self.ckpt.remove_leftovers()  # half-written folders of a killed run (never a resume point)
        if latest is None:
            if self.dist.is_main:
                dropped = self.metrics_log.truncate_after(0)  # lines of a run killed before its first checkpoint
                if dropped:
                    log.info("no checkpoint to resume: starting afresh (%d metrics lines of the lost run dropped)",
                             dropped)
                self.out_dir.mkdir(parents=True, exist_ok=True)
                (self.out_dir / "run.json").write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
            return
        if not self.cfg.train.resume:
            raise ConfigError(
                f"{self.out_dir} already holds checkpoints ({latest.name}); resume them with train.resume=true "
                "or choose a new train.out_dir (nothing is overwritten)"
            )
        from ..io import read_config

        record = read_config(latest)
        mine = to_dict(self.model.config)
        if record.get("family") != model_info(self.model).family or record.get("config") != mine:
            raise CheckpointError(
                f"{latest} holds a {record.get('model')} model whose config differs from this run's "
                f"{self.cfg.model}; choose a new train.out_dir, or rerun with the original model settings"
            )
        self._check_same_optimizer(latest)
        s = CheckpointManager.load_state(latest)
        if (s.get("lora") is None) != (self.lora is None):
            raise ConfigError(f"{latest} was trained {'with' if self.lora is None else 'without'} LoRA adapters; "
                              "resume it with its own lora.* settings, or choose a new train.out_dir")
        if self.lora is None:
            self.load_checkpoint(latest)
        else:  # the frozen weights are the rebuilt base's; what trains comes back exactly from the state
            self.model.load_state_dict(s["lora"], strict=False)
        if self.task_module is not None and s.get("task") is not None:
            self.task_module.load_state_dict(s["task"])
        if s["world_size"] != self.dist.world_size:
            log.warning("resuming a %d-process run on %d processes: the data order changes from here",
                        s["world_size"], self.dist.world_size)
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        torch.set_rng_state(s["rng_torch"])
        random.setstate(s["rng_python"])
        if s["rng_cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["rng_cuda"], self.device)
        self.aug_generator.set_state(s["rng_augment"])
        if s.get("rng_data") is not None and _data_generator(self.data.train) is not None:
            _data_generator(self.data.train).set_state(s["rng_data"])  # e.g. masked-LM masking
        for key in ("step", "epoch", "batch_in_epoch", "best", "bad_evals", "last_eval_step"):
            setattr(self, key, s[key])
        self.last_saved_step = self.step
        if self.dist.is_main:
            self.metrics_log.truncate_after(self.step)  # the steps after the checkpoint run (and are logged) again
        log.info("resumed from %s at step %d (epoch %d, batch %d)", latest, self.step, self.epoch, self.batch_in_epoch)

    def _check_same_optimizer(self, checkpoint: Path) -> None:
        """Refuse to resume with different optim.* settings: the optimizer state and schedule restored from the
        checkpoint carry the old ones (lr, betas, weight decay, ...), so the new values would be recorded in
        run.json but silently not used. Changing them means a new run that starts from these weights."""
        try:
            before = json.loads((checkpoint / "run.json").read_text(encoding="utf-8")).get("optim")
        except (OSError, ValueError, AttributeError):
            return  # checked complete by resume_point; a foreign run.json holds no optimizer to compare
        now = to_dict(self.cfg.optim)
        if not isinstance(before, dict):
            return
        changed = [k for k in now if k in before and before[k] != now[k]]
        if changed:
            diff = ", ".join(f"optim.{k}={now[k]!r} (the checkpoint's run has {before[k]!r})" for k in changed)
            keep = " ".join(f"optim.{k}={json.dumps(before[k]).replace(' ', '')}" for k in changed)
            raise ConfigError(
                f"resuming {checkpoint} with {diff}: the optimizer and schedule state restored from the checkpoint "
                f"would keep the old values. Resume with the original settings ({keep}), or start a new run from "
                f"these weights with the new ones: init={checkpoint} train.out_dir=<a new directory>"
            )

    # ------------------------------------------------------------------ data
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """(x, y, epoch_ended) forever, keeping (epoch, batch_in_epoch) = the next batch to fetch."""
        per_epoch = len(self.sampler)
        while True:
            self.sampler.load_state_dict({"epoch": self.epoch, "batch": self.batch_in_epoch})
            remaining = list(iter(self.sampler))
            for x, y in iterate_batches(self.data.train, remaining, self.cfg.data.num_workers):
                self.batch_in_epoch += 1
                ended = self.batch_in_epoch >= per_epoch
                if ended:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                yield x, y, ended

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train until steps/epochs/time run out, early stopping or Ctrl-C; returns a summary."""
        tc = self.cfg.train
        status = "completed"
        if self.step >= self.total_steps:
            log.info("training already complete at step %d", self.step)
        self.train_seconds, items_done, self._stop_reason = 0.0, 0, None
        window_items, window_loss, window_steps = 0, torch.zeros((), device=self.device), 0
        window_start = time.perf_counter()
        stream = self._batches()
        if self.train_module is None:
            raise TrainingError("this Trainer was closed (its data-parallel group is gone); build a new Trainer")
        model = self.train_module
        model.train()
        progress = _progress(self.total_steps, self.step, tc.progress and self.dist.is_main)
        self._emit("on_train_start")
        try:
            with _StopRequest() as stop:
                while self.step < self.total_steps:
                    t0 = time.perf_counter()
                    loss_sum, n_items, epoch_ended = self._train_step(model, stream)
                    self.step += 1
                    window_loss += loss_sum
                    window_steps += 1
                    window_items += n_items
                    self._nonfinite |= ~torch.isfinite(loss_sum)
                    if self.device.type == "cpu" or self.step % tc.log_every == 0:
                        self._check_finite()
                    self.train_seconds += time.perf_counter() - t0
                    items_done += n_items
                    if self.step % tc.log_every == 0 or self.step == self.total_steps:
                        loss = all_reduce_mean(window_loss / window_steps, self.dist).item()
                        rate = window_items / max(1e-9, time.perf_counter() - window_start)
                        rec = {"step": self.step, "epoch": self.epoch, "split": "train", "loss": loss,
                               "lr": self.scheduler.get_last_lr()[0], "throughput": rate, "unit": self.task.unit}
                        self._record(rec)
                        progress.update_to(self.step, loss=loss, rate=rate, unit=self.task.unit)
                        window_items, window_loss, window_steps = 0, torch.zeros((), device=self.device), 0
                        window_start = time.perf_counter()
                    self._emit("on_step_end")
                    eval_due = (tc.eval_every and self.step % tc.eval_every == 0) or (not tc.eval_every and epoch_ended)
                    if eval_due:
                        if self._evaluate_and_save():
                            status = "early_stopped"
                            break
                    elif tc.save_every and self.step % tc.save_every == 0:
                        self._save()
                    reason = self._agreed_stop("interrupted" if stop.requested else self._stop_reason)
                    if reason is not None:
                        status = reason
                        break
            if status != "interrupted" and self.last_eval_step != self.step:
                self._evaluate_and_save(final=True)
            elif self.last_saved_step != self.step:
                self._save()
        finally:
            progress.close()
            if self.dist.is_main and self.history:
                plot_history(self.history, self.out_dir / "curves.png")
        val = self.history_last("val")
        summary = {
            "status": status, "step": self.step, "epoch": self.epoch, "total_steps": self.total_steps,
            "best_metric": self.best, "monitor": tc.monitor, "val": val,
            "best_checkpoint": str(self.ckpt.best) if self.ckpt.best else None,
            "last_checkpoint": str(self.ckpt.latest) if self.ckpt.latest else None,
            "train_seconds": self.train_seconds,
            "throughput": items_done * self.dist.world_size / self.train_seconds if self.train_seconds else None,
            "unit": self.task.unit,
        }
        if status == "interrupted":
            log.warning("interrupted at step %d; checkpoint %s (rerun the same command to resume)",
                        self.step, summary["last_checkpoint"])
        self._emit("on_train_end", summary)
        return summary

    def request_stop(self, reason: str = "stopped") -> None:
        """End :meth:`fit` after the current step (a callback's way out): a final evaluation and checkpoint
        follow, except for ``"interrupted"``, which only saves. ``reason`` becomes the summary's status."""
        if reason not in STOP_REASONS:
            raise ConfigError(f"stop reason {reason!r} is not one of {', '.join(STOP_REASONS)}; pick one")
        current = STOP_REASONS.index(self._stop_reason) if self._stop_reason is not None else -1
        self._stop_reason = STOP_REASONS[max(current, STOP_REASONS.index(reason))]

    def _agreed_stop(self, reason: str | None) -> str | None:
        """The stop reason every process agrees on (the strongest one asked for anywhere), or None to go on."""
        code = all_reduce_max(STOP_REASONS.index(reason) + 1 if reason is not None else 0, self.dist, self.device)
        return STOP_REASONS[code - 1] if code else None

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def close(self) -> None:
        """Leave the data-parallel process group (call once done with fit / evaluate); the trainer drops the
        wrapped module (and the compiled step holding it) first, as the strategy's teardown requires."""
        self.train_module = None
        self._compiled = (None, None)
        self.parallel.teardown()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _loss_fn(self, model: nn.Module):
        """x, y -> training loss; with train.compile, forward + loss compiled as one graph (compiling the loss
        call rather than the model keeps the task's fused paths, e.g. the chunked LM cross-entropy)."""
        if self._compiled[0] is not model:
            def step(x, y):
                return self.task.loss(model, x, y)[0]

            mode = self.cfg.train.compile
            self._compiled = (model, torch.compile(step, mode=mode) if mode else step)
        return self._compiled[1]

    def _train_step(self, model: nn.Module, stream) -> tuple[torch.Tensor, int, bool]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, items, epoch_ended)."""
        tc = self.cfg.train
        loss_sum = torch.zeros((), device=self.device)
        n_items, epoch_ended = 0, False
        for micro in range(tc.grad_accum):
            x, y, ended = next(stream)
            epoch_ended |= ended
            x, y = to_device(x, self.device), to_device(y, self.device)
            if self.data.train_transform is not None:
                x = self.data.train_transform(x, generator=self.aug_generator)
            if self.mixing is not None:  # y becomes soft targets (B, classes); same generator: exact resume
                x, y = self.mixing(x, y, generator=self.aug_generator)
            if tc.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            # the first micro-batches accumulate locally; the last one's backward reduces the sum over processes
            local = self.parallel.no_sync(model) if micro < tc.grad_accum - 1 else contextlib.nullcontext()
            with local, autocast(self.device, self.precision):
                loss = self._loss_fn(model)(x, y)
                self.scaler.scale(loss / tc.grad_accum).backward()
            loss_sum += loss.detach() / tc.grad_accum
            n_items += self.task.count(x, y)
        if tc.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss_sum, n_items, epoch_ended

    def _check_finite(self) -> None:
        if any_flag(bool(self._nonfinite.item()), self.dist, self.device):
            last = self.ckpt.latest
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
            raise TrainingError(
                f"the training loss became NaN or infinite by step {self.step}; stopped ({where}). Try a lower "
                f"optim.lr (now {self.cfg.optim.lr}), train.clip_grad_norm=1.0, or train.precision=fp32"
            )

    def _record(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        self.metrics_log.write(rec)
        if rec["split"] != "train":
            log.info("step %d %s: %s", rec["step"], rec["split"],
                     ", ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)))

    def history_last(self, split: str) -> dict[str, Any] | None:
        for rec in reversed(self.history):
            if rec["split"] == split:
                return {k: v for k, v in rec.items() if k not in ("step", "epoch", "split")}
        return None

    def load_checkpoint(self, path: str | Path) -> None:
        """Load the weights of a checkpoint (e.g. the best one) into the model being trained."""
        from ..io import load

        weights = load(path, map_location=self.device).state_dict()
        if self.lora is not None:  # a plain (merged) checkpoint: the weights take it, the adapters restart at zero
            from ..nn.lora import load_merged_state_dict_

            load_merged_state_dict_(self.model, weights)
        else:
            self.model.load_state_dict(weights)

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Metrics of the current model on ``split`` ("val" or "test")."""
        dataset = getattr(self.data, split)
        if dataset is None or len(dataset) == 0:
            return {}
        return evaluate_model(
            self.model, dataset, self.eval_task, transform=self.data.eval_transform,
            batch_size=self.cfg.data.eval_batch_size or 2 * self.cfg.data.batch_size,
            device=self.device, precision=self.precision, num_workers=self.cfg.data.num_workers,
        )

    def _evaluate_and_save(self, final: bool = False) -> bool:
        """Evaluate, save (marking the best), update early stopping; True when training should stop."""
        self._check_finite()
        metrics = self.evaluate("val")
        self.last_eval_step = self.step
        is_best = False
        if metrics:
            self._record({"step": self.step, "epoch": self.epoch, "split": "val", **metrics})
            self._emit("on_evaluate", metrics)
            value = metrics[self.cfg.train.monitor.removeprefix("val_")]
            if better(self.cfg.train.monitor, value, self.best):
                self.best, self.bad_evals, is_best = value, 0, True
            else:
                self.bad_evals += 1
        self._save(is_best=is_best or self.ckpt.best is None)
        patience = self.cfg.train.patience
        if patience and self.bad_evals >= patience and not final:
            log.info("early stopping: %s did not improve for %d evaluations", self.cfg.train.monitor, patience)
            return True
        return False

    def _save(self, is_best: bool = False) -> None:
        self._check_finite()
        state = self._state()
        if self.dist.is_main:
            meta = {**self.data.meta, "task": self.data.task}
            model = self.model if self.lora is None else _merged(self.model)  # a checkpoint is a plain model
            self.ckpt.save(
                self.step, model, state, meta=meta, run_config=to_dict(self.cfg),
                tokenizer=self.data.tokenizer, is_best=is_best,
            )
        barrier(self.dist, self.device)  # the other ranks may read the checkpoint and its pointers from here on
        path = self.ckpt.path(self.step)
        log.debug("saved %s", path)
        self.last_saved_step = self.step
        self._emit("on_save", path)


class _progress:
    """A tqdm bar on a terminal (loss, throughput, ETA); silent elsewhere."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=None if total == sys.maxsize else total, initial=initial, unit="step",
                            dynamic_ncols=True, leave=True)

    def update_to(self, step: int, *, loss: float, rate: float, unit: str) -> None:
        if self.bar is None:
            log.info("step %d: loss %.4f, %s %s/s", step, loss, f"{rate:,.0f}", unit)
            return
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.0f} {unit}/s" + ("" if math.isfinite(loss) else "!"))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
