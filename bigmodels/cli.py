"""The `bigmodels` command line: a table of commands and the argv plumbing that calls them.

Each command is a plain function in its stage's module (``train/commands.py``, ``evaluate/commands.py``, ...)
whose signature is its schema: positional parameters become positional arguments, keyword-only parameters
become ``--options`` (a bool becomes a flag), and ``Annotated[type, "help text"]`` gives each its help. The
docstring's first line is the command's one-line summary; the whole docstring is its ``--help`` description.
A ``*overrides`` parameter collects dotted config overrides (``--optim.lr=3e-4`` or ``optim.lr=3e-4``); any
other argument that starts with ``-`` must be an option of the command. Anything a user gets wrong ends in
one line naming the problem and the fix, and a non-zero exit code: 2 for bad input, 130 for Ctrl-C, 1 for a
bug (with a hint to get the traceback).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import logging
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator

from .bench.commands import bench, compare, models
from .bench.compression import compress
from .convert import convert
from .errors import BigModelsError, ConfigError
from .evaluate.commands import evaluate
from .explain.commands import explain
from .export.commands import export
from .infer.commands import embed, generate, predict, translate
from .serve.commands import serve
from .train.commands import train

log = logging.getLogger("bigmodels")

# ---------------------------------------------------------------------------------------------- the table

COMMANDS: dict[str, Callable[..., int]] = {
    "models": models, "train": train, "evaluate": evaluate, "predict": predict, "generate": generate,
    "embed": embed, "translate": translate, "convert": convert, "compare": compare, "bench": bench,
    "export": export,
    "explain": explain,
    "serve": serve,
    "compress": compress,
}

# ---------------------------------------------------------------------------------------------- plumbing

OVERRIDES = "overrides"  # the *args parameter that takes dotted config overrides, leading dashes included
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+(e[-+]?\d+)?$", re.IGNORECASE)


def parameters(fn: Callable[..., int]) -> Iterator[tuple[inspect.Parameter, type, str | None]]:
    """``(parameter, value type, help)`` of each parameter of a command: the help is the first metadata item of
    its ``Annotated`` type when that is a string; ``X | None`` is read as ``X``."""
    hints = typing.get_type_hints(fn, include_extras=True)
    for param in inspect.signature(fn).parameters.values():
        tp, help_ = hints.get(param.name, str), None
        if typing.get_origin(tp) is typing.Annotated:
            meta = tp.__metadata__
            help_ = meta[0] if isinstance(meta[0], str) else None
            tp = tp.__origin__
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        yield param, (args[0] if args else tp), help_


def summary(fn: Callable[..., int]) -> str:
    """A command's one-line summary: the first line of its docstring."""
    return (inspect.getdoc(fn) or "").partition("\n")[0].strip()


def _with_default(help_: str | None, default) -> str | None:
    if help_ is None or default in (None, False, inspect.Parameter.empty) or "default" in help_:
        return help_
    return f"{help_} (default: {str(default).replace('%', '%%')})"


def _metavar(param: inspect.Parameter) -> str:
    return "KEY=VALUE" if param.name == OVERRIDES else param.name.upper().removesuffix("S")


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line naming the command's --help (exit 2), like every
    other bad input, instead of the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bigmodels", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"bigmodels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn in COMMANDS.items():
        p = sub.add_parser(name, help=summary(fn), description=inspect.getdoc(fn),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        options = []
        for param, tp, help_ in parameters(fn):
            help_ = help_.replace("%", "%%") if help_ else help_  # argparse formats help with %: a literal % stays one
            flag = "--" + param.name.replace("_", "-")
            if param.kind is param.VAR_POSITIONAL:
                p.add_argument(param.name, nargs="*", metavar=_metavar(param), help=help_)
            elif param.kind is param.POSITIONAL_OR_KEYWORD:
                nargs = "?" if param.default is not param.empty else None
                p.add_argument(param.name, nargs=nargs, default=None if nargs else argparse.SUPPRESS,
                               metavar=param.name.upper(), help=help_)
            elif tp is bool:
                p.add_argument(flag, dest=param.name, action="store_true", default=param.default, help=help_)
                options.append(flag)
            else:
                p.add_argument(flag, dest=param.name, type=tp, default=param.default, metavar=tp.__name__.upper(),
                               help=_with_default(help_, param.default))
                options.append(flag)
        p.set_defaults(_fn=fn, _options=tuple(options))
    return parser


def _is_option(arg: str) -> bool:
    """An argument that argparse reads as an option: a leading dash that does not start a negative number."""
    return arg.startswith("-") and arg != "-" and not _NEGATIVE_NUMBER.match(arg)


def _unknown_option(command: str, arg: str, options: tuple[str, ...], takes_overrides: bool) -> ConfigError:
    flag = arg.partition("=")[0]
    close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"its options are {', '.join(options) or 'none'}"
    if takes_overrides:
        hint += " (config overrides take the form key=value, e.g. --optim.lr=3e-4)"
    else:
        hint += " (put -- before inputs that start with a dash)"
    return ConfigError(f"unknown option {flag} for `bigmodels {command}`; {hint}; see `bigmodels {command} --help`")


def _call(fn: Callable[..., int], ns: argparse.Namespace, extra: list[str]) -> int:
    sig = inspect.signature(fn)
    var = next((p for p in sig.parameters.values() if p.kind is p.VAR_POSITIONAL), None)
    takes_overrides = var is not None and var.name == OVERRIDES
    for arg in extra:  # what argparse did not recognise: a mistyped option is never taken as an input
        if _is_option(arg) and not (takes_overrides and "=" in arg):
            raise _unknown_option(ns.command, arg, ns._options, takes_overrides)
    if extra and var is None:
        raise ConfigError(f"unrecognised arguments: {' '.join(extra)}; see `bigmodels {ns.command} --help`")
    args, kwargs = [], {}
    for param in sig.parameters.values():
        if param.kind is param.POSITIONAL_OR_KEYWORD:
            args.append(getattr(ns, param.name))
        elif param.kind is param.VAR_POSITIONAL:
            args.extend(list(getattr(ns, param.name) or []) + extra)  # inputs after an option come back as extra
        else:
            kwargs[param.name] = getattr(ns, param.name)
    return fn(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns, extra = parser.parse_known_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        return _call(ns._fn, ns, extra)
    except BigModelsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so plainly, keep the traceback one variable away
        if os.environ.get("BIGMODELS_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\nthis is a bug in bigmodels; rerun with "
              "BIGMODELS_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 1
