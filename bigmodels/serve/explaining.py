"""POST /v1/explain: one text or image, one method, one target -> the :class:`~bigmodels.explain.Explanation` as
JSON.

Explanations register hooks on the model and switch its attention path while they run, so they never touch the
model the other endpoints are running: the first explanation copies it, and explanations take turns on that
copy (one at a time; each still holds a slot of the server's concurrency and its timeout). One that is stopped
(its request timed out: 504) ends at the copy's next forward pass and frees the copy for the next one, rather
than running on to the end while the requests behind it time out too.

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> explainer = Explainer(tiny_model("cnn_small").eval(), tokenizer=None)
    >>> explainer.methods()
    ['saliency', 'ig', 'gradcam', 'occlusion']
    >>> body = explainer.run(torch.randn(1, 8, 8), "saliency", target=None, settings={})
    >>> body["modality"], len(body["heatmap"]["grid"])
    ('image', 8)
"""

from __future__ import annotations

import base64
import copy
import inspect
import math
import threading
from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = ["Explainer", "SERVED_METHODS", "explanation_body"]

# the methods the server runs, cheapest first; LIME and KernelSHAP (hundreds of model calls) are left to the CLI
SERVED_METHODS = ("saliency", "ig", "gradcam", "occlusion", "attention")


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def explanation_body(e: Any, *, png: bool = True) -> dict[str, Any]:
    """An explanation as the endpoint answers it: the summary (method, target and predicted class and label,
    score, settings, IG's ``delta``), ``tokens`` / ``words`` with their attributions for a text, and for an image
    the ``heatmap``: its (H, W) ``grid`` and, with ``png``, the picture as a base64 PNG."""
    summary = e.summary()
    body: dict[str, Any] = {"object": "explanation", **{k: summary[k] for k in (
        "method", "modality", "target", "target_label", "predicted", "predicted_label", "settings")}}
    body["score"] = _finite(e.score)
    body["delta"], body["relative_delta"] = _finite(e.delta), _finite(e.relative_delta)
    if e.modality == "text":
        body["tokens"] = [{"token": t, "attribution": float(a), "special": w is None}
                          for t, a, w in zip(e.tokens, e.attributions.tolist(), e.word_ids, strict=True)]
        if e.words is not None and e.word_attributions is not None:
            body["words"] = [{"word": w, "attribution": float(a)}
                             for w, a in zip(e.words, e.word_attributions.tolist(), strict=True)]
    else:
        heat = e.heatmap().float()
        body["heatmap"] = {"height": heat.shape[0], "width": heat.shape[1], "grid": heat.tolist(),
                           "signed": bool((heat < 0).any())}
        if png:
            from ..explain.report import heatmap_png

            body["heatmap"]["png"] = base64.b64encode(heatmap_png(e)).decode("ascii")
    return body


class ExplanationStopped(Exception):
    """An explanation ended early because its request was stopped (timed out) while it waited or ran."""


def _stop_if(cancel: threading.Event):
    def hook(module: nn.Module, args: Any) -> None:
        if cancel.is_set():
            raise ExplanationStopped("the request was stopped (timed out); the explanation ended early")

    return hook


class Explainer:
    """Explanations of ``model`` (with ``tokenizer`` for texts) on a copy of it made on first use, one at a
    time. ``run`` raises ConfigError / DataError for a method that does not apply, a target out of range or an
    input the model cannot take (the server answers 400)."""

    def __init__(self, model: nn.Module | None, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._copy: nn.Module | None = None
        self._lock = threading.Lock()
        self._methods: list[str] | None = None

    def methods(self) -> list[str]:
        """The methods of :data:`SERVED_METHODS` that apply to the model (none for an ONNX Runtime model)."""
        if self._methods is None:
            if not isinstance(self.model, nn.Module) or getattr(self.model, "backend", "torch") != "torch":
                self._methods = []
            else:
                from ..explain import supports

                try:
                    applies = set(supports(self.model))
                except Exception:  # a module without the model contract: nothing to explain
                    applies = set()
                self._methods = [m for m in SERVED_METHODS if m in applies]
        return self._methods

    def check(self, method: str) -> None:
        methods = self.methods()
        if method not in methods:
            raise ConfigError(f"method={method!r} does not apply to this model; the methods that do are "
                              f"{', '.join(methods)} (bigmodels.explain.supports)")

    def run(self, inputs: Any, method: str, *, target: int | None, settings: dict[str, Any],
            position: int | None = None, png: bool = True, cancel: threading.Event | None = None) -> dict[str, Any]:
        """The JSON body of one explanation (see :func:`explanation_body`; for a PIL image also the heatmap's
        ``region``, see :func:`_region`); blocks while another runs. Once ``cancel`` is set, waiting stops and
        the explanation ends at its next forward pass, with :class:`ExplanationStopped`."""
        from ..explain import explain

        self.check(method)
        while not self._lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise ExplanationStopped("the request was stopped (timed out) while another explanation ran")
        try:
            if self._copy is None:
                self._copy = copy.deepcopy(self.model).eval()
            hook = None if cancel is None else self._copy.register_forward_pre_hook(_stop_if(cancel), prepend=True)
            try:
                e = explain(self._copy, inputs, method, target, self.tokenizer, position=position, **settings)
            finally:
                if hook is not None:
                    hook.remove()
        finally:
            self._lock.release()
        body = explanation_body(e, png=png)
        body["settings"] = {**_defaults(method), **body["settings"]}  # every setting the method ran with
        from PIL import Image

        if e.modality == "image" and isinstance(inputs, Image.Image):  # an uploaded file, at its own size
            body["heatmap"]["region"] = _region(self.model, *inputs.size)
        return body


def _region(model: nn.Module, width: int, height: int) -> dict[str, float]:
    """The part of a ``width`` x ``height`` image that the model saw, in its pixels: all of it (resized to the
    model's size) or the centre crop of ImageNet's resize-then-crop (as ``prepare_image`` cuts it), so that a
    client can lay the heatmap over the right pixels."""
    from ..infer.pipelines import image_preprocessing
    from ..models._contract import model_info

    prep = image_preprocessing(model, model_info(model).meta)
    if prep.resize is None:
        return {"left": 0.0, "top": 0.0, "width": float(width), "height": float(height)}
    crop = prep.size[0]
    scale = prep.resize / min(width, height)
    resized_w, resized_h = max(crop, round(width * scale)), max(crop, round(height * scale))
    return {"left": (resized_w - crop) // 2 / scale, "top": (resized_h - crop) // 2 / scale,
            "width": crop / scale, "height": crop / scale}


def _defaults(method: str) -> dict[str, Any]:
    from ..explain import METHODS

    params = list(inspect.signature(METHODS[method]).parameters.values())[2:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and (
        p.default is None or isinstance(p.default, str | int | float | bool))}
