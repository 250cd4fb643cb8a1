"""The `explain` command of the CLI: attributions for images or texts, written as PNG heatmaps, a JSON summary
and one self-contained HTML report (see :mod:`bigmodels.cli` for how a signature becomes a command line)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

from torch import nn

from ..errors import ConfigError

__all__ = ["explain"]

log = logging.getLogger(__name__)


def _open(checkpoint: str, architecture: str | None) -> tuple[nn.Module, Path | None]:
    """(the model, the directory it came from): a saved model / run / HF directory, a plain state dict with
    ``architecture``, or a registered name (random weights: a quick look at the machinery)."""
    from ..io import load, resolve_checkpoint
    from ..registry import list_models

    if architecture is not None:
        return load(checkpoint, model=architecture), None
    if not Path(checkpoint).exists() and checkpoint in list_models():
        from ..registry import create_model

        log.warning("%s is a registered architecture with random weights; its explanations show the machinery, "
                    "not a trained model", checkpoint)
        return create_model(checkpoint).eval(), None
    directory = resolve_checkpoint(checkpoint)
    return load(directory), directory


def explain(
    checkpoint: Annotated[str, "a saved model, training run or Hugging Face directory (or a registered name)"],
    *inputs: Annotated[str, "image files, or texts for a text model (activations: a folder of images with class "
                            "sub-folders, a file of label<TAB>text lines, or a data set name such as digits)"],
    method: Annotated[str, "ig | saliency | gradcam | occlusion | lime | shap | attention | activations | all"] = "ig",
    target: Annotated[int | None, "the class (token id for language models) to explain; default the predicted"] = None,
    out: Annotated[str, "the folder for report.html, the PNG heatmaps and summary.json"] = "explanations",
    tokenizer: Annotated[str | None, "the tokenizer (file or directory) when the model folder has none"] = None,
    steps: Annotated[int, "integrated gradients: the steps along the path (doubled, up to 400, while the "
                          "attributions miss f(x) - f(baseline) by more than 1%)"] = 50,
    samples: Annotated[int, "lime / shap: the number of perturbed inputs"] = 256,
    faithfulness: Annotated[bool, "score every explanation by deletion / insertion against random orders"] = False,
    model: Annotated[str | None, "the registered architecture of a plain state dict, e.g. resnet50"] = None,
    examples: Annotated[int, "activations: the most labelled examples read from the input"] = 512,
) -> int:
    """Explain a model's predictions: attributions per pixel or per word, as heatmaps and one HTML report.

    Example: bigmodels explain runs/sst2 "a gripping, funny film" --method all --faithfulness"""
    from . import METHODS, rank_methods, supports, write_report
    from . import explain as explain_one
    from .report import heatmap_png, token_png

    if not inputs:
        raise ConfigError("give at least one input: image file paths, or texts for a text model")
    if method not in ("all", "activations") and method not in METHODS:
        raise ConfigError(f"--method {method!r} is not a method; choose one of {', '.join(METHODS)}, activations "
                          "or all")
    if steps < 1 or samples < 2:
        raise ConfigError(f"--steps {steps} must be >= 1 and --samples {samples} >= 2")
    net, directory = _open(checkpoint, model)
    tok = tokenizer or (str(directory) if directory is not None and (
        (directory / "tokenizer.json").is_file() or (directory / "vocab.txt").is_file()) else None)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if method == "activations":
        return _activations(net, inputs, tok, folder, checkpoint, examples)
    methods = supports(net) if method == "all" else [method]
    options = {"ig": {"steps": steps}, "lime": {"samples": samples}, "shap": {"samples": samples}}
    everything, summary = [], []
    for n, item in enumerate(inputs):
        found = [explain_one(net, item, m, target, tok, **options.get(m, {})) for m in methods]
        ranks = rank_methods(net, found) if faithfulness else None
        for e in found:
            record = {"input": item, **e.summary()}
            if e.modality == "image" or e.tokens is not None:
                png = folder / f"{n}_{e.method}.png"
                (heatmap_png if e.modality == "image" else token_png)(e, png)
                record["png"] = png.name
            summary.append(record)
            words = ", ".join(f"{w} {a:+.3f}" for w, a in e.top_words(3)) if e.modality == "text" else ""
            print(f"{item}: {e.method} for {e.target_label or e.target} (predicted {e.predicted_label or e.predicted}"
                  f", p={e.score:.3f})" + (f" {words}" if words else "")
                  + (f" completeness gap {100 * e.relative_delta:.2f}%" if e.relative_delta is not None else ""))
        if ranks:
            summary.append({"input": item, "faithfulness": ranks})
        everything.append((item, found, ranks))
    report = folder / "report.html"
    write_report([e for _, found, _ in everything for e in found], report,
                 title=f"Explanations of {_model_name(net, checkpoint)}",
                 faithfulness=[{"input": str(i), **r} for i, _, ranks in everything for r in (ranks or [])])
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"report: {report}")
    return 0


def _activations(net: nn.Module, inputs: tuple[str, ...], tokenizer: str | None, folder: Path, name: str,
                 examples: int) -> int:
    """``--method activations``: per-layer statistics, linear probes and PCA projections of one labelled input."""
    from .activations import activation_report, load_labelled
    from .report import write_report

    if len(inputs) != 1:
        raise ConfigError(f"--method activations reads one labelled input (a folder of images with class "
                          f"sub-folders, a file of label<TAB>text lines, or a data set name), got {len(inputs)}")
    batches, labels, class_names = load_labelled(net, inputs[0], tokenizer, limit=examples)
    result = activation_report(net, batches, labels, class_names=class_names)
    (folder / "projections.png").write_bytes(result["projections"].png)
    for row in result["stats"]:
        print(f"{row['layer']}: mean {row['mean']:.3f} std {row['std']:.3f}"
              + (f" dead {100 * row['dead']:.1f}%" if row["dead"] is not None else "")
              + (f" saturated {100 * row['saturated']:.1f}%" if row["saturated"] is not None else ""))
    for row in result["probes"]:
        print(f"{row['layer']}: probe accuracy {row['test_accuracy']:.3f} (chance {row['chance']:.3f})")
    report = write_report([], folder / "report.html", title=f"Activations of {name} on {inputs[0]}",
                          activations=result)
    summary = {"input": inputs[0], "examples": len(labels), "class_names": class_names, "stats": result["stats"],
               "probes": result["probes"], "png": "projections.png"}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"report: {report}")
    return 0


def _model_name(net, checkpoint: str) -> str:
    """The report's name for the model: its registry name and the file it came from (the file's name only)."""
    from ..models._contract import model_info

    try:
        name = model_info(net).name
    except ConfigError:  # a module that carries no ModelInfo: the path is all there is
        return Path(checkpoint).name or checkpoint
    return f"{name} ({Path(checkpoint).name})" if Path(checkpoint).name != name else name
