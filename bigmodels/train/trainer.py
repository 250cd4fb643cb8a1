"""The training loop every family uses.

    >>> from bigmodels import Trainer, resolve_run_config
    >>> cfg = resolve_run_config(None, ["model=mlp_small", "train.epochs=1", "train.out_dir=/tmp/bm-doc"])
    >>> summary = Trainer(cfg).fit()          # doctest: +SKIP
    >>> summary["status"], summary["val"]["accuracy"]    # doctest: +SKIP

What it does, in order of a step: fetch the next batch (a resumable, seeded order, sharded over
data-parallel processes), augment it on the device with a checkpointed generator (transforms, then
mixup/CutMix into soft targets), [channels-last], forward under autocast,
backward (gradient accumulation with DDP's ``no_sync``), unscale + clip, optimizer and scheduler step. Around
the steps: non-finite loss detection, JSONL metrics and a progress bar, evaluation with early stopping and
best-checkpoint selection, atomic checkpoints, and a Ctrl-C that saves and exits cleanly.
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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import RunConfig, to_dict
from ..data import DataBundle, build_data
from ..data.batching import iterate_batches, to_device
from ..data.sampler import ResumableSampler
from ..errors import CheckpointError, ConfigError, TrainingError
from ..evaluate.loop import autocast, evaluate_model
from ..io import saved_tokenizer
from ..registry import create_model, get_spec
from ..tasks import Task, better, get_task
from .checkpoint import CheckpointManager
from .distributed import DistInfo, all_reduce_mean, any_flag, cleanup, init_distributed
from .logs import MetricsLog, plot_history
from .mixing import MixUpCutMix
from .optim import build_optimizer, build_scheduler

__all__ = ["Trainer", "build_model_for_data", "resolve_device"]

log = logging.getLogger("bigmodels.train")


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
    if model.task != data.task:
        raise ConfigError(
            f"model {name!r} solves {model.task} but the data is {data.task}; pick a model for that task "
            f"(`bigmodels models --task {data.task}`)"
        )
    if init is not None:
        _load_pretrained(model, init)
    return model


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
    from ..data.tokenizers import load_tokenizer
    from ..io import resolve_checkpoint

    return load_tokenizer(Path(spec) if Path(spec).exists() else resolve_checkpoint(spec))


def _load_pretrained(model: nn.Module, init: str) -> None:
    from ..io import load

    source = load(init)
    if getattr(source, "family", None) != getattr(model, "family", None):
        raise CheckpointError(
            f"init={init} holds a {getattr(source, 'family', '?')} model but the run builds a "
            f"{model.family} model; pick a model of the same family or another init"
        )
    mine = model.state_dict()
    vocab = getattr(model.config, "vocab_size", None)
    matched = {k: _fit_rows(v, mine[k], vocab) for k, v in source.state_dict().items() if k in mine}
    matched = {k: v for k, v in matched.items() if v is not None}
    if not matched:
        raise CheckpointError(f"no weight of init={init} fits {model.model_name}; check the model settings")
    model.load_state_dict(matched, strict=False)
    fresh = sorted(set(mine) - set(matched))
    log.info("init from %s: %d tensors loaded, %d new%s", init, len(matched), len(fresh),
             f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else "")


def _fit_rows(source: torch.Tensor, target: torch.Tensor, vocab_size: int | None) -> torch.Tensor | None:
    """``source`` if it fits ``target``; a (vocab_size, C) table padded with zero rows when the target has a
    vocabulary padded to a multiple (GPT's ``pad_vocab_multiple``); else None (the tensor starts fresh)."""
    if source.shape == target.shape:
        return source
    if (source.dim() == 2 and source.shape[0] == vocab_size and source.shape[1] == target.shape[1]
            and target.shape[0] > vocab_size):
        return torch.cat([source, source.new_zeros(target.shape[0] - source.shape[0], *source.shape[1:])])
    return None


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

    ``on_step(trainer)`` is called after every optimizer step (for tests and custom hooks).
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        model: nn.Module | None = None,
        data: DataBundle | None = None,
        on_step: Callable[[Trainer], None] | None = None,
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
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        self.data = data or build_data(
            cfg.data.name, cfg.data.path, val_fraction=cfg.data.val_fraction, block_size=cfg.data.block_size,
            img_size=cfg.data.img_size, crop_padding=cfg.data.crop_padding, hflip=cfg.data.hflip,
            random_resized_crop=cfg.data.random_resized_crop, rrc_scale=cfg.data.rrc_scale, seed=cfg.data.seed,
            tokenizer=_data_tokenizer(cfg), max_length=cfg.data.max_length,
            src_lang=cfg.data.src_lang, tgt_lang=cfg.data.tgt_lang,
        )
        # the training objective (label smoothing, soft targets) and the evaluation task (plain cross-entropy on
        # hard labels, so val metrics stay comparable across settings) are one object when they agree
        self.task: Task = get_task(self.data.task, self.data.meta, label_smoothing=tc.label_smoothing)
        self.eval_task: Task = get_task(self.data.task, self.data.meta) if tc.label_smoothing else self.task
        self._compiled: tuple[nn.Module | None, Callable | None] = (None, None)  # (model, its loss step)
        self.mixing = _build_mixing(cfg, self.data)
        self.model = model if model is not None else build_model_for_data(
            cfg.model, cfg.model_args, self.data, cfg.init
        )
        self.model.to(self.device)
        if tc.channels_last:  # converts the 4-D (conv) weights only; inputs follow in _train_step
            self.model.to(memory_format=torch.channels_last)
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
        self.optimizer = build_optimizer(self.model, cfg.optim)
        sched_total = self.total_steps if self.total_steps != sys.maxsize else 10**9
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, sched_total)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.aug_generator = torch.Generator().manual_seed(tc.seed + 7919 * (self.dist.rank + 1))
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled else None
        )
        self.out_dir = Path(tc.out_dir)
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", keep_last=tc.keep_last)
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=self.dist.is_main)
        self.on_step = on_step
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
        }

    def _resume_or_start(self) -> None:
        latest = self.ckpt.latest
        if latest is None:
            if self.dist.is_main:
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
        if record.get("family") != getattr(self.model, "family", None) or record.get("config") != mine:
            raise CheckpointError(
                f"{latest} holds a {record.get('model')} model whose config differs from this run's "
                f"{self.cfg.model}; choose a new train.out_dir, or rerun with the original model settings"
            )
        self.load_checkpoint(latest)
        s = CheckpointManager.load_state(latest)
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
        log.info("resumed from %s at step %d (epoch %d, batch %d)", latest, self.step, self.epoch, self.batch_in_epoch)

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
        train_seconds, items_done = 0.0, 0
        window_items, window_loss, window_steps = 0, torch.zeros((), device=self.device), 0
        window_start = time.perf_counter()
        stream = self._batches()
        model = self.ddp or self.model
        model.train()
        progress = _progress(self.total_steps, self.step, tc.progress and self.dist.is_main)
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
                    train_seconds += time.perf_counter() - t0
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
                    if self.on_step is not None:
                        self.on_step(self)
                    eval_due = (tc.eval_every and self.step % tc.eval_every == 0) or (not tc.eval_every and epoch_ended)
                    if eval_due:
                        if self._evaluate_and_save():
                            status = "early_stopped"
                            break
                    elif tc.save_every and self.step % tc.save_every == 0:
                        self._save()
                    out_of_time = tc.max_time is not None and train_seconds >= tc.max_time
                    if any_flag(stop.requested or out_of_time, self.dist, self.device):
                        status = "interrupted" if stop.requested else "time_limit"
                        break
            if status in ("completed", "time_limit") and self.last_eval_step != self.step:
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
            "train_seconds": train_seconds,
            "throughput": items_done * self.dist.world_size / train_seconds if train_seconds else None,
            "unit": self.task.unit,
        }
        if status == "interrupted":
            log.warning("interrupted at step %d; checkpoint %s (rerun the same command to resume)",
                        self.step, summary["last_checkpoint"])
        return summary

    def close(self) -> None:
        """Leave the data-parallel process group (call once done with fit / evaluate).

        The DDP wrapper goes first: while it (or anything holding its reducer) lives, the gloo worker
        threads outlive ``destroy_process_group`` and the process can abort at exit with
        "terminate called without an active exception".
        """
        self.ddp = None
        cleanup(self.dist)

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
            sync = self.ddp is not None and micro < tc.grad_accum - 1
            with self.ddp.no_sync() if sync else contextlib.nullcontext(), autocast(self.device, self.precision):
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

        self.model.load_state_dict(load(path, map_location=self.device).state_dict())

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
            path = self.ckpt.save(
                self.step, self.model, state, meta=meta, run_config=to_dict(self.cfg),
                tokenizer=self.data.tokenizer, is_best=is_best,
            )
            log.debug("saved %s", path)
        self.last_saved_step = self.step


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
