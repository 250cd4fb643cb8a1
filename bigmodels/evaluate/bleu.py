"""Translation quality: the evaluator that translates a test set and scores it.

`corpus_bleu` (in :mod:`bigmodels.metrics.text`) is sacreBLEU's default BLEU (13a tokenization, mixed case,
exponential smoothing) on detokenized text, the figure translation papers report since Post 2018; its signature
string says exactly how it was computed. `translate_texts` turns sentences into translations with
`bigmodels.infer.seq2seq.translate`, encoding the source exactly as the training data did
(`bigmodels.data.parallel.encode_sources`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..metrics.text import corpus_bleu, corpus_chrf

__all__ = ["corpus_bleu", "evaluate_translation", "translate_texts"]


def _one_line(text: str) -> str:
    """A translation as one output line (a generated line break would shift every later line)."""
    return text.replace("\r", " ").replace("\n", " ").strip()


@torch.no_grad()
def translate_texts(
    model: nn.Module, tokenizer, texts: Sequence[str], *, num_beams: int = 4, batch_size: int = 64,
    max_new_tokens: int = 128, max_length: int | None = None, length_penalty: float = 1.0,
) -> list[str]:
    """One translation per text, in the order given. Texts are stripped; an empty one translates to "" (the
    model is not run on it). Batches group texts of similar length (longest first), so little padding is
    computed; sources keep their first ``max_length`` tokens (default: the model's
    ``max_position_embeddings`` when its config has one, else all).

    >>> translate_texts(model, tokenizer, ["A dog runs.", ""], num_beams=4)  # doctest: +SKIP
    ['Ein Hund rennt.', '']
    """
    from ..data.parallel import encode_sources, seq2seq_token_ids, source_batch
    from ..infer.seq2seq import translate

    if num_beams < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"num_beams={num_beams}, batch_size={batch_size} and max_new_tokens={max_new_tokens} "
                          "must all be >= 1")
    pad_id = seq2seq_token_ids(tokenizer)["pad_token_id"]
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    stripped = [t.strip() for t in texts]
    todo = [i for i, t in enumerate(stripped) if t]
    ids = dict(zip(todo, encode_sources(tokenizer, [stripped[i] for i in todo], max_length), strict=True))
    order = sorted(todo, key=lambda i: -len(ids[i]))  # stable: equal lengths keep their order
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    out = [""] * len(texts)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = source_batch([ids[i] for i in chunk], pad_id)
            generated = translate(model, batch["input_ids"].to(device),
                                  attention_mask=batch["attention_mask"].to(device), num_beams=num_beams,
                                  max_new_tokens=max_new_tokens, length_penalty=length_penalty)
            for i, row in zip(chunk, generated, strict=True):
                out[i] = _one_line(tokenizer.decode(list(row), skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


def evaluate_translation(
    model: nn.Module, tokenizer, sources: Sequence[str], references: Sequence[str], *, num_beams: int = 4,
    batch_size: int = 64, max_new_tokens: int = 128, max_length: int | None = None,
) -> dict[str, Any]:
    """Translate ``sources`` (`translate_texts`) and score them against ``references`` (`corpus_bleu`):
    {"bleu", "signature", "chrf", "exact_match", "num_beams", "sentences", "precisions", "brevity_penalty",
    "sys_len", "ref_len", "hypotheses"}.

    >>> data = build_data(DataConfig(name="translation", path="../shared/data/multi30k",  # doctest: +SKIP
    ...                              src_lang="en", tgt_lang="de"), tokenizer=tok)
    >>> evaluate_translation(model, tok, data.test.sources, data.test.targets)["bleu"]  # doctest: +SKIP
    """
    if len(sources) != len(references):
        raise DataError(f"got {len(sources)} source sentences and {len(references)} references; pass one each")
    hypotheses = translate_texts(model, tokenizer, sources, num_beams=num_beams, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, max_length=max_length)
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True)) / max(1, len(sources))
    return {**corpus_bleu(hypotheses, references), "chrf": corpus_chrf(hypotheses, references), "exact_match": exact,
            "num_beams": num_beams, "sentences": len(sources), "hypotheses": hypotheses}
