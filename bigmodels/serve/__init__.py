"""Serving: an OpenAI-compatible HTTP API over the inference pipelines (FastAPI + uvicorn).

``create_app(model)`` builds the app (see :mod:`bigmodels.serve.app`); ``bigmodels serve MODEL`` runs it. The
web framework is an optional extra, imported on first use: ``pip install "bigmodels[serve]"``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "require_serve_extra"]

_EXTRA = ("fastapi", "uvicorn", "prometheus_client")


def require_serve_extra() -> None:
    """Raise a ConfigError naming the extra when FastAPI, uvicorn or prometheus-client is not installed."""
    import importlib.util

    from ..errors import ConfigError

    missing = [m for m in _EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"serving needs {', '.join(missing)}, which is not installed; install the extra: "
                          'pip install "bigmodels[serve]"')


def create_app(*args: Any, **kwargs: Any):
    """The FastAPI app serving one model: :func:`bigmodels.serve.app.create_app`."""
    require_serve_extra()
    from .app import create_app as build

    return build(*args, **kwargs)
