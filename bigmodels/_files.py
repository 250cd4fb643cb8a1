"""Writing files and directories atomically: a crash or Ctrl-C leaves the old version, never half a new one."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_dir", "current_umask", "check_output", "cpu_info"]


@functools.cache
def cpu_info() -> str:
    """The text of /proc/cpuinfo (vendor, model name, feature flags), read once; empty where it cannot be read."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def current_umask() -> int:
    """The process umask (read from /proc where it is shown, since os.umask can only read it by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step (a crash leaves the old file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # mkstemp creates 0600 whatever the umask; a saved model must be as readable as any file the user writes
        os.chmod(tmp, 0o666 & ~current_umask())
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary sibling directory; on success it is renamed to ``path`` (which must not exist)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; respect the umask as mkdir does
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output(path: str | Path, option: str, *, directory: bool = False) -> Path:
    """Check, before any work, that an output named by ``option`` (e.g. ``--out``) can be written at ``path``:
    a file (``directory=False``, in an existing folder) or a directory (created later with its parents). Raises
    :class:`~bigmodels.errors.ConfigError` naming the path, what is wrong and the fix; writes nothing.

    >>> check_output("/proc/x.npy", "--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    bigmodels.errors.ConfigError: --out /proc/x.npy: cannot write in /proc (...); give a path in a folder you can write
    """
    from .errors import ConfigError

    out = Path(path)
    kind = "directory" if directory else "file"
    if str(path).strip() == "":
        raise ConfigError(f"{option} is empty; give a {kind} path")
    if out.exists() or out.is_symlink():
        if directory and not out.is_dir():
            raise ConfigError(f"{option} {path} is not a directory (a file or device is there); give a new or "
                              "existing directory path")
        if not directory and not out.is_file():
            what = "a directory" if out.is_dir() else "not a regular file"
            raise ConfigError(f"{option} {path} is {what}; give a file path")
    if directory:  # the nearest folder that exists: the directory is made inside it
        folder = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists() or p.is_symlink())
        if not folder.is_dir():
            raise ConfigError(f"{option} {path}: {folder} is a file, not a folder; give a directory path")
    else:
        folder = out.absolute().parent
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"{option} {path}: the folder {folder} {what}; create it or pick another path")
    try:  # permissions alone do not tell (root, read-only mounts, /proc): try to create a file there
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot write in {folder} ({e.strerror or e}); give a path in a folder "
                          "you can write") from None
    os.close(fd)
    os.unlink(probe)
    return out
