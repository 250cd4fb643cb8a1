"""Callbacks: code that runs at fixed points of :meth:`Trainer.fit <bigmodels.train.Trainer.fit>` without
editing the loop.

Subclass :class:`Callback`, override the events you need, and pass instances to ``Trainer(cfg, callbacks=[...])``.
The events, in the order one ``fit()`` emits them:

- ``on_train_start(trainer)``: once, before the first step (after a resume, ``trainer.step`` is the step
  resumed from);
- ``on_step_end(trainer)``: after every optimizer step (``trainer.step`` counts it);
- ``on_evaluate(trainer, metrics)``: after each validation in the loop, with its metrics (``{"loss": ...}``);
- ``on_save(trainer, path)``: after the checkpoint of ``trainer.step`` is written to ``path`` (by the main
  process; every process gets the call);
- ``on_train_end(trainer, summary)``: once, with the summary ``fit()`` returns (not when it raises).

Every process of a data-parallel run calls every event. A callback may end training with
``trainer.request_stop(reason)``; the processes agree on it after the step, so all of them stop together.

    >>> class PrintLoss(Callback):
    ...     def on_evaluate(self, trainer, metrics):
    ...         print(trainer.step, metrics["loss"])
    >>> Trainer(cfg, callbacks=[PrintLoss()]).fit()     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["Callback", "TimeBudget"]


class Callback:
    """Base class: every event does nothing until overridden."""

    def on_train_start(self, trainer: Trainer) -> None:
        """``fit()`` begins."""

    def on_step_end(self, trainer: Trainer) -> None:
        """An optimizer step ended; ``trainer.step`` counts it."""

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """The validation split was evaluated at ``trainer.step``."""

    def on_save(self, trainer: Trainer, path: Path) -> None:
        """The checkpoint of ``trainer.step`` was written to ``path``."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """``fit()`` is about to return ``summary``."""


class TimeBudget(Callback):
    """Stop once this ``fit()`` call has spent ``seconds`` in training steps (evaluation and checkpoints do not
    count); the run ends with status ``"time_limit"``, a final evaluation and a checkpoint. ``train.max_time``
    adds one.

    >>> Trainer(cfg, callbacks=[TimeBudget(60)]).fit()["status"]    # doctest: +SKIP
    'time_limit'
    """

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ConfigError(f"a time budget of {seconds!r} seconds is no budget; give a positive number")
        self.seconds = seconds

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.train_seconds >= self.seconds:
            trainer.request_stop("time_limit")
