"""`bigmodels evaluate`: a saved model on a data split, by the metric each data set is judged by.

The data set decides the metric: classification accuracy, entity F1 (conll2003), perplexity (text, pydoc),
Spearman of cosine similarities (stsb) and sacreBLEU of beam-search translations (translation, numbers).
Each command parameter's ``Annotated`` text is its ``--help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from torch import nn

from ..errors import ConfigError, DataError

__all__ = ["evaluate"]


def evaluate(
    checkpoint: Annotated[str, "the model: a saved directory, a training run (its best checkpoint) or a hub name"],
    *,
    data: Annotated[str | None, "the data set (e.g. digits, sst2, conll2003, stsb, translation); "
                                "default: the one the model was trained on"] = None,
    data_path: Annotated[str | None, "the data set's folder or file, where it is not embedded"] = None,
    split: Annotated[str | None, "the split to score (train, val, test, or a translation split); "
                                 "default: test where the data has one, else val"] = None,
    batch_size: Annotated[int, "examples per forward pass"] = 256,
    max_length: Annotated[int, "text: truncate each example to this many tokens"] = 128,
    beams: Annotated[int | None, "translation: beam width of the decoded translations (1 is greedy); "
                                 "default 4"] = None,
    max_new_tokens: Annotated[int, "translation: the longest translation, in tokens"] = 128,
) -> int:
    """Evaluate a model (a directory, training run or hub name) on a data split, as JSON on stdout.

    By default the data it was trained on; stsb (Spearman of cosine similarities), sst2, conll2003 (entity F1),
    text/pydoc (perplexity), translation (sacreBLEU of beam-search translations, plus teacher-forced loss).

    Example: bigmodels evaluate runs/mnist_cnn --split test
    """
    from ..config import DataConfig, from_dict, to_dict
    from ..data.bundle import PARALLEL_DATASETS
    from ..io import load, resolve_checkpoint, saved_tokenizer

    for option, value, minimum in (("--batch-size", batch_size, 1), ("--max-length", max_length, 1),
                                   ("--beams", beams, 1), ("--max-new-tokens", max_new_tokens, 1)):
        if value is not None and value < minimum:
            raise ConfigError(f"{option} {value} must be >= {minimum}"
                              + (" (1 is greedy decoding)" if option == "--beams" else ""))
    directory = resolve_checkpoint(checkpoint)
    model = load(directory)
    trained = _trained_data_config(directory)
    base = to_dict(trained) if trained is not None and data in (None, trained.name) else {}
    data_cfg = from_dict(DataConfig, {**base, **({"name": data} if data else {}),
                                      **({"path": data_path} if data_path else {})})
    if data_cfg.name not in PARALLEL_DATASETS and beams is not None:
        raise ConfigError(f"--beams sets the beam search of translation, not of data {data_cfg.name!r}; drop it")
    if data_cfg.name == "stsb":
        split = split or "test"
        metrics = evaluate_sts_split(model, directory, data_cfg.path, split, batch_size)
    elif data_cfg.name in PARALLEL_DATASETS:
        split = split or "test"
        metrics = evaluate_translation_split(model, directory, data_cfg, split, batch_size=batch_size,
                                             max_length=max_length, beams=4 if beams is None else beams,
                                             max_new_tokens=max_new_tokens)
    else:
        from ..data import build_data
        from ..tasks import get_task
        from .loop import evaluate_model

        # the trained data set as evaluation reads it: no augmentation, the tokenizer saved with the model
        eval_cfg = from_dict(DataConfig, {**to_dict(data_cfg), "max_length": max_length, "tokenizer": None,
                                          "crop_padding": 0, "hflip": False, "random_resized_crop": False})
        bundle = build_data(eval_cfg, tokenizer=saved_tokenizer(directory))
        available = [s for s in ("train", "val", "test") if getattr(bundle, s) is not None]
        split = split or ("test" if "test" in available else "val")
        if split not in available:
            raise ConfigError(f"split {split!r} is not available for data {data_cfg.name!r}"
                              f"{_why_absent(bundle, split)}; use --split with one of {', '.join(available)}")
        if model.info.task != bundle.task:
            raise ConfigError(f"{directory} is a {model.info.task} model but data {data_cfg.name!r} is {bundle.task}")
        metrics = evaluate_model(model, getattr(bundle, split), get_task(bundle.task, bundle.meta),
                                 transform=bundle.eval_transform, batch_size=batch_size)
        if not metrics:  # never a result without figures
            raise DataError(f"split {split!r} of data {data_cfg.name!r} has no examples to score; use --split "
                            f"with another of {', '.join(available)}")
    print(json.dumps({"checkpoint": str(directory), "data": data_cfg.name, "split": split, **metrics}, indent=2))
    return 0


def _why_absent(bundle, split: str) -> str:
    """": <reason>" where the data says why it has no scorable ``split`` (a file without labels, none at all)."""
    reason = bundle.meta.get("unlabelled_splits", {}).get(split)
    if reason is None and split in bundle.meta.get("splits", {}) and bundle.meta["splits"][split] is None:
        reason = f"its folder has no {split} file"
    return f": {reason}" if reason else ""


def _trained_data_config(directory: Path):
    """The data config a training run saved beside the checkpoint (run.json), else None."""
    run = directory / "run.json"
    if not run.is_file():
        return None
    from ..config import DataConfig, from_dict

    return from_dict(DataConfig, json.loads(run.read_text())["data"], "data")


def evaluate_sts_split(model: nn.Module, directory: Path, path: str | None, split: str,
                       batch_size: int) -> dict[str, Any]:
    """Spearman / Pearson of a sentence-embedding model's cosines on one STS-B split read from ``path``."""
    from ..data.nlp import read_stsb
    from ..data.tokenizers import load_tokenizer
    from .sts import evaluate_sts

    if path is None:
        raise ConfigError("--data stsb needs --data-path: the folder with stsb-en-test.csv (e.g. ../shared/data/stsb)")
    if getattr(model.config, "head", None) != "embedding":
        raise ConfigError(f"{directory} is not a sentence-embedding model; STS-B scores embeddings by cosine")
    positions = getattr(model.config, "max_position_embeddings", None)  # sentence-transformers keep 256 tokens
    return evaluate_sts(model, load_tokenizer(directory), read_stsb(path, split), batch_size=min(batch_size, 64),
                        max_length=min(256, positions) if positions else 256)


def evaluate_translation_split(model: nn.Module, directory: Path, data_cfg, split: str, *, batch_size: int,
                               max_length: int, beams: int, max_new_tokens: int) -> dict[str, Any]:
    """Teacher-forced loss / perplexity / token accuracy and sacreBLEU of the translations of one split, read
    on its own (as STS-B is) with the model's saved tokenizer."""
    from ..data.parallel import SPLIT_NAMES, ParallelDataset, read_split
    from ..io import saved_tokenizer
    from ..tasks import get_task
    from .bleu import evaluate_translation
    from .loop import evaluate_model

    if model.info.task != "translation":
        raise ConfigError(f"{directory} is a {model.info.task} model; data {data_cfg.name!r} needs a translation model")
    if data_cfg.path is None and data_cfg.name == "translation":
        raise ConfigError("--data translation needs --data-path: the folder of the {split}.{lang}[.gz] files "
                          "(e.g. ../shared/data/multi30k)")
    if split not in SPLIT_NAMES:
        raise ConfigError(f"split {split!r} is not a translation split; use --split with one of "
                          f"{', '.join(SPLIT_NAMES)}")
    if beams < 1 or max_new_tokens < 1:
        raise ConfigError(f"--beams {beams} and --max-new-tokens {max_new_tokens} must be >= 1")
    tokenizer = saved_tokenizer(directory)
    if tokenizer is None:
        raise ConfigError(f"{directory} has no tokenizer.json; translation needs the tokenizer the model was "
                          "trained with (a training run's checkpoints carry it)")
    meta = model.info.meta  # what the trainer saved: the data's languages, splits, ...
    src_lang, tgt_lang = data_cfg.src_lang or meta.get("src_lang"), data_cfg.tgt_lang or meta.get("tgt_lang")
    if not src_lang or not tgt_lang:
        raise ConfigError(f"{directory} does not record its language pair (meta src_lang / tgt_lang); evaluate a "
                          "training run, or save the model with meta={'src_lang': 'en', 'tgt_lang': 'de'}")
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = min(max_length, limit) if limit else max_length
    if data_cfg.name == "numbers":  # embedded: the split is regenerated from the run's seed
        from ..data.numbers import SPLITS, number_pairs

        name, pairs = f"numbers {split}", number_pairs(SPLITS, seed=data_cfg.seed)[split]
    else:
        name, pairs = read_split(data_cfg.path, split, src_lang, tgt_lang)
    dataset = ParallelDataset(pairs, tokenizer, max_length)
    metrics = evaluate_model(model, dataset, get_task("translation"), batch_size=batch_size)
    scores = evaluate_translation(model, tokenizer, dataset.sources, dataset.targets, num_beams=beams,
                                  batch_size=min(batch_size, 64), max_new_tokens=max_new_tokens, max_length=max_length)
    scores.pop("hypotheses")
    return {"languages": f"{src_lang}-{tgt_lang}", "split_name": name, **metrics, **scores}
