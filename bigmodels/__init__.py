"""bigmodels: the core technology of large models in one small, fast, correct codebase.

    >>> import bigmodels
    >>> model = bigmodels.create_model("cnn_keras")
    >>> sum(p.numel() for p in model.parameters())
    1969738
"""

from importlib.metadata import PackageNotFoundError, version

from .config import RunConfig, resolve_run_config
from .errors import BigModelsError, CheckpointError, ConfigError, DataError, ModelNotFoundError, TrainingError
from .io import load, load_tokenizer, save
from .registry import create_model, get_spec, list_models

try:
    __version__ = version("bigmodels")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"


def __getattr__(name: str):
    # the engine pulls in data and evaluation code: import it on first use, keeping `import bigmodels` light
    if name == "Trainer":
        from .train import Trainer

        return Trainer
    if name == "build_data":
        from .data import build_data

        return build_data
    if name == "load_torchvision":
        from .interop.torchvision import load_torchvision

        return load_torchvision
    if name == "evaluate_model":
        from .evaluate import evaluate_model

        return evaluate_model
    if name == "pipeline":
        from .infer.pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'bigmodels' has no attribute {name!r}")


__all__ = [
    "create_model", "list_models", "get_spec", "load", "load_tokenizer", "save", "Trainer", "RunConfig",
    "resolve_run_config", "pipeline",
    "build_data", "evaluate_model", "load_torchvision", "BigModelsError", "ConfigError", "DataError", "CheckpointError",
    "ModelNotFoundError", "TrainingError", "__version__",
]
