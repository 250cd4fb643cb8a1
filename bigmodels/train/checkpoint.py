"""Training checkpoints: one directory per step, written atomically, with ``latest`` / ``best`` pointers.

A checkpoint directory is a complete saved model (``config.json`` + ``model.safetensors``, so `evaluate`
and `predict` take it directly) plus ``trainer_state.pt``: optimizer, scheduler, RNG states, data position
and counters, read back with ``torch.load(weights_only=True)``. The directory is built under a temporary
name and renamed into place, then the pointer file is replaced atomically: a crash or Ctrl-C at any moment
leaves the previous checkpoint and pointers intact.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_dir, atomic_write
from ..errors import CheckpointError
from ..io import save

__all__ = ["CheckpointManager"]

_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    def _pointer(self, name: str) -> Path | None:
        p = self.root / name
        if not p.is_file():
            return None
        target = self.root / p.read_text().strip()
        return target if target.is_dir() else None

    @property
    def latest(self) -> Path | None:
        return self._pointer("latest")

    @property
    def best(self) -> Path | None:
        return self._pointer("best")

    def save(
        self,
        step: int,
        model: nn.Module,
        state: dict[str, Any],
        *,
        meta: dict[str, Any],
        run_config: dict[str, Any],
        tokenizer=None,
        is_best: bool = False,
    ) -> Path:
        """Write the checkpoint of ``step`` and move the pointers; returns its directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:08d}"
        final = self.root / name
        if final.exists():  # the same step saved twice (e.g. eval and interrupt): replace it atomically
            shutil.rmtree(final)
        with atomic_dir(final) as tmp:
            save(model, tmp, meta=meta, tokenizer=tokenizer)
            torch.save(state, tmp / "trainer_state.pt")
            (tmp / "run.json").write_text(json.dumps(run_config, indent=2) + "\n")
        atomic_write(self.root / "latest", lambda p: p.write_text(name + "\n"))
        if is_best:
            atomic_write(self.root / "best", lambda p: p.write_text(name + "\n"))
        self._prune()
        return final

    def _prune(self) -> None:
        keep = {p.name for p in (self.latest, self.best) if p is not None}
        steps = sorted(d for d in self.root.iterdir() if d.is_dir() and _STEP_DIR.match(d.name))
        for d in steps[: max(0, len(steps) - self.keep_last)]:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def load_state(directory: Path) -> dict[str, Any]:
        """The trainer state of a checkpoint directory (safe unpickling only)."""
        path = directory / "trainer_state.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing; this checkpoint cannot resume training") from None
        except Exception as e:  # truncated or foreign file
            reason = f"{type(e).__name__}: {e}"
            raise CheckpointError(f"{path} is unreadable ({reason}); remove it or start afresh") from None
