"""Request and response bodies of the HTTP API, with OpenAI's field names where OpenAI has the endpoint.

Requests are strict: a field of the wrong JSON type (``"max_tokens": "5"``), a NaN or an infinity, and a field
the endpoint does not know are rejected with a 400 naming the field, rather than guessed at or ignored.
Errors have OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "APIError", "error_body", "CompletionRequest", "StreamOptions", "EmbeddingRequest", "ClassifyRequest",
    "TranslateRequest", "ExplainRequest", "Usage", "CompletionChoice", "Completion", "Embedding", "EmbeddingList",
    "ModelCard", "ModelList", "MAX_INPUTS",
]

MAX_INPUTS = 2048  # texts (or images) in one request, as OpenAI's embeddings endpoint allows


class APIError(Exception):
    """An HTTP error answered in OpenAI's shape: ``status``, a message naming the bad value and the fix, the
    error ``type`` (``invalid_request_error``, ...), the request field ``param`` and a machine-readable ``code``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as the OpenAI API answers an error."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    model: str | None = Field(None, description="the served model's id (GET /v1/models); optional")
    user: str | None = Field(None, description="an end-user id (accepted, as OpenAI does, and not used)")


Texts = str | list[str]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool = False


class CompletionRequest(_Request):
    """POST /v1/completions. ``stop`` strings end a choice and are left out of its text, as OpenAI does;
    ``top_k`` and ``repetition_penalty`` are extensions (vLLM has them too)."""

    prompt: Texts = Field(description="a text, or a list of texts (one completion each)")
    max_tokens: int | None = Field(16, ge=0, description="new tokens at most per choice")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Texts | None = None
    seed: int | None = None
    echo: bool = False


class EmbeddingRequest(_Request):
    """POST /v1/embeddings; ``encoding_format="base64"`` (the openai client's default) sends each vector as the
    base64 of its little-endian float32 bytes."""

    input: Texts = Field(description="a text, or a list of texts")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class ClassifyRequest(_Request):
    """POST /v1/classify: texts (``input``) for a text classifier, or base64-encoded image files (``image``,
    plain or as a ``data:image/...;base64,`` URL) for an image classifier; the ``top_k`` best labels of each."""

    input: Texts | None = None
    image: Texts | None = None
    top_k: int = Field(1, ge=1, le=1000)


class TranslateRequest(_Request):
    """POST /v1/translate: beam search (``num_beams=1`` is greedy) of up to ``max_tokens`` tokens per text."""

    input: Texts
    num_beams: int = Field(4, ge=1, le=16)
    max_tokens: int = Field(128, ge=1)


class ExplainRequest(_Request):
    """POST /v1/explain: one text (``input``) or one base64-encoded image file (``image``), explained by
    ``method`` for class ``target`` (default: the predicted class; a token id for a language model, whose
    ``position`` defaults to the last token). ``steps`` (ig), ``window`` / ``stride`` (occlusion, in pixels),
    ``relu`` (gradcam) and ``residual`` (attention) are the methods' settings."""

    input: str | None = None
    image: str | None = None
    method: str = Field("ig", description="saliency, ig, gradcam, occlusion or attention, where it applies")
    target: int | None = Field(None, ge=0)
    position: int | None = None
    steps: int | None = Field(None, ge=1, le=256)
    window: int | None = Field(None, ge=1)
    stride: int | None = Field(None, ge=1)
    relu: bool | None = None
    residual: bool | None = None
    png: bool = Field(True, description="for an image, also the heatmap drawn over it as a base64 PNG")

    def settings(self) -> dict[str, int | bool]:
        return {k: getattr(self, k) for k in ("steps", "window", "stride", "relu", "residual")
                if getattr(self, k) is not None}


# ---------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bigmodels"
    task: str = Field(description="the registry task, e.g. language_modeling")
    endpoints: list[str] = Field(description="the endpoints this model answers")
    context_length: int | None = None
    explain_methods: list[str] = Field(default_factory=list, description="the POST /v1/explain methods that apply")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
