"""Training checkpoints: one directory per step, written atomically, with ``latest`` / ``best`` pointers.

A checkpoint directory is a complete saved model (``config.json`` + ``model.safetensors``, so `evaluate`
and `predict` take it directly) plus ``trainer_state.pt``: optimizer, scheduler, RNG states, data position
and counters, read back with ``torch.load(weights_only=True)``. The directory is built under a temporary
name and renamed into place, then the pointer file is replaced atomically: a crash or Ctrl-C at any moment
leaves the previous checkpoint and pointers intact.

Resuming reads ``latest`` when it names a complete checkpoint (every file present and readable); when it is
missing, garbage or names a step that is gone, :meth:`CheckpointManager.resume_point` falls back to the newest
complete step folder, and refuses (rather than start over the existing steps) when none is usable. The
half-written ``.step_*.tmp`` folders a kill leaves are removed by :meth:`CheckpointManager.remove_leftovers`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_dir, atomic_write
from ..errors import CheckpointError
from ..io import CONFIG_FILE, WEIGHTS_FILE, save

__all__ = ["CheckpointManager"]

log = logging.getLogger("bigmodels.train")

_STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE, RUN_FILE = "trainer_state.pt", "run.json"
# what a checkpoint's atomic writes leave behind when killed: a folder .step_N.XXXX.tmp, a pointer .latest.XXXX.tmp
_LEFTOVER = re.compile(r"^\.(step_\d+|latest|best)\..*\.tmp$")


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    def _pointer(self, name: str) -> Path | None:
        p = self.root / name
        try:
            target = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):  # missing, or not text (a damaged pointer)
            return None
        if not _STEP_DIR.match(target):
            return None
        return self.root / target if (self.root / target).is_dir() else None

    @property
    def latest(self) -> Path | None:
        return self._pointer("latest")

    @property
    def best(self) -> Path | None:
        return self._pointer("best")

    def steps(self) -> list[Path]:
        """The step folders of this run, oldest first (complete or not)."""
        if not self.root.is_dir():
            return []
        return sorted((d for d in self.root.iterdir() if d.is_dir() and _STEP_DIR.match(d.name)),
                      key=lambda d: int(d.name.removeprefix("step_")))

    @staticmethod
    def problem(directory: Path) -> str | None:
        """Why the checkpoint ``directory`` cannot resume training (a missing, truncated or unreadable file), or
        None. Cheap: the JSON files are parsed, the weights' header is checked against the file size and the
        trainer state's zip directory is read, without loading any tensor."""
        for name in (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, RUN_FILE):
            if not (directory / name).is_file():
                return f"{name} is missing"
        try:
            for name in (CONFIG_FILE, RUN_FILE):
                json.loads((directory / name).read_text(encoding="utf-8"))
            _check_safetensors(directory / WEIGHTS_FILE)
            with zipfile.ZipFile(directory / STATE_FILE) as z:  # torch.save's format; truncation loses the directory
                z.namelist()
        except (OSError, ValueError, zipfile.BadZipFile) as e:  # JSONDecodeError and UnicodeDecodeError included
            return f"unreadable ({type(e).__name__}: {e})"
        return None

    def resume_point(self) -> Path | None:
        """The checkpoint to resume from: ``latest`` when it names a complete checkpoint, else the newest complete
        step folder (logged); None for a run that has none at all. Raises :class:`CheckpointError` when step
        folders or a pointer exist but none is usable: starting again from step 0 would overwrite them."""
        latest, steps = self.latest, self.steps()
        if latest is not None and self.problem(latest) is None:
            return latest
        pointer = self.root / "latest"
        if not steps and not pointer.exists():
            return None
        why = (f"names {latest.name}, which is incomplete ({self.problem(latest)})" if latest is not None
               else "is missing" if not pointer.exists() else "does not name an existing step folder")
        problems = {}
        for d in reversed(steps):
            problems[d.name] = self.problem(d)
            if problems[d.name] is None:
                log.warning("%s %s; resuming from the newest complete checkpoint, %s", pointer, why, d.name)
                return d
        found = "; ".join(f"{name}: {reason}" for name, reason in problems.items()) or "no step folders"
        raise CheckpointError(
            f"no complete checkpoint to resume in {self.root} ({pointer.name} {why}; {found}); nothing was touched. "
            "Restore the files, or choose a new train.out_dir to start afresh"
        )

    def remove_leftovers(self) -> list[str]:
        """Remove what killed checkpoint writes left in this folder (``.step_*.tmp`` folders, pointer temp files);
        returns their names."""
        if not self.root.is_dir():
            return []
        removed = []
        for p in self.root.iterdir():
            if _LEFTOVER.match(p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p.name)
        if removed:
            log.info("removed %d half-written checkpoint file(s) left by an interrupted run: %s", len(removed),
                     ", ".join(sorted(removed)))
        return removed

    def path(self, step: int) -> Path:
        """The directory of the checkpoint of ``step`` (written or not)."""
        return self.root / f"step_{step:08d}"

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
        final = self.path(step)
        name = final.name
        if final.exists():  # the same step saved twice (e.g. eval and interrupt): replace it atomically
            shutil.rmtree(final)
        with atomic_dir(final) as tmp:
            save(model, tmp, meta=meta, tokenizer=tokenizer)
            torch.save(state, tmp / STATE_FILE)
            (tmp / RUN_FILE).write_text(json.dumps(run_config, indent=2) + "\n")
        atomic_write(self.root / "latest", lambda p: p.write_text(name + "\n"))
        if is_best:
            atomic_write(self.root / "best", lambda p: p.write_text(name + "\n"))
        self._prune()
        return final

    def _prune(self) -> None:
        keep = {p.name for p in (self.latest, self.best) if p is not None}
        steps = self.steps()
        for d in steps[: max(0, len(steps) - self.keep_last)]:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def load_state(directory: Path) -> dict[str, Any]:
        """The trainer state of a checkpoint directory (safe unpickling only)."""
        path = directory / STATE_FILE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing; this checkpoint cannot resume training") from None
        except Exception as e:  # truncated or foreign file
            if "Weights only load failed" in str(e):  # a pickle of more than tensors: refused, never advice to unpickle
                from ..interop import refused_pickle

                raise refused_pickle(path, e) from None
            reason = f"{type(e).__name__}: {e}"
            raise CheckpointError(f"{path} is unreadable ({reason}); remove it or start afresh") from None


def _check_safetensors(path: Path) -> None:
    """Raise ValueError unless ``path`` is a whole safetensors file: its header parses and the tensors it
    declares end exactly at the end of the file (a truncated copy fails here, without reading the tensors)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name} is {size} bytes, shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path.name} declares a {n}-byte header in a {size}-byte file")
        header = json.loads(f.read(n))
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError):
        raise ValueError(f"{path.name} has no safetensors header") from None
    if 8 + n + end != size:
        raise ValueError(f"{path.name} is {size} bytes but its tensors need {8 + n + end}: truncated")
