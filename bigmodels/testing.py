"""What tests (ours and users') share: tiny versions of every registered preset, inputs they accept, and a
check that a model honours the contract (``models/_contract.py``).

>>> model = tiny_model("gpt2")          # GPT-2's structure at 2 layers, width 32
>>> call(model, example_inputs(model)).shape
torch.Size([2, 16, 96])
>>> assert_conforms(model)
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from torch import nn

from .models._contract import call, check_contract, example_inputs
from .registry import check_registered, create_model

__all__ = ["wordpiece_tokenizer", "TINY", "tiny_overrides", "tiny_model", "example_inputs", "call", "assert_conforms"]

# Families whose presets are big (resnet50, gpt2, bert-base, ...) shrink here: name-glob -> config overrides,
# applied in order with fnmatch, e.g. {"resnet*": {"layers": (1, 1, 1, 1)}}.
TINY: dict[str, dict[str, Any]] = {
    "gpt2*": {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 96, "block_size": 64},
    "bert*": {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64,
              "vocab_size": 96, "max_position_embeddings": 64},
    "minilm*": {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64,
                "vocab_size": 96, "max_position_embeddings": 64},
    "*resne*": {"layers": (1, 1, 1, 1)},  # resnet*, resnext*, wide_resnet*: one block per stage
    "vit_[bls]_*": {"num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64, "img_size": 32},
    # the auxiliary heads only train through forward_aux (tests/models/test_inception.py), not through forward
    "googlenet": {"aux_logits": False, "img_size": 64},
    "inception_v3": {"aux_logits": False, "img_size": 75},
    "efficientnet_[bl]*": {"width_mult": 0.25, "depth_mult": 0.25, "head_width": 64, "img_size": 32},
    "transformer_*": {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_encoder_layers": 1, "num_decoder_layers": 1,
                      "src_vocab_size": 64, "tgt_vocab_size": 64},
}


def tiny_overrides(name: str) -> dict[str, Any]:
    """The config overrides that shrink preset ``name`` (empty for presets that are small already)."""
    overrides: dict[str, Any] = {}
    for pattern, values in TINY.items():
        if fnmatch.fnmatch(name, pattern):
            overrides.update(values)
    return overrides


def tiny_model(name: str, **overrides: Any) -> nn.Module:
    """Registered model ``name`` at a tiny size (its structure kept), with further ``overrides``."""
    return create_model(name, **{**tiny_overrides(name), **overrides})


def assert_conforms(model: nn.Module) -> None:
    """Raise AssertionError listing every way ``model`` breaks the model contract (see ``check_contract``) or
    disagrees with the registry (see ``bigmodels.registry.check_registered``).

    >>> assert_conforms(tiny_model("resnet18"))
    """
    problems = check_contract(model)
    problems += [p for p in check_registered(model) if p not in problems]  # no ModelInfo: said once
    if problems:
        raise AssertionError(f"{type(model).__name__} breaks the model contract:\n- " + "\n- ".join(problems))


def wordpiece_tokenizer(words: list[str], directory: str | Path):
    """A BERT WordPiece tokenizer over a small vocabulary (specials, the whole ``words``, their letters and the
    ## letters), written to ``directory``/vocab.txt: enough to drive any tiny text model end to end.

    >>> import tempfile
    >>> tok = wordpiece_tokenizer(["the", "dog"], tempfile.mkdtemp())
    >>> tok.decode(tok.encode("the dog")), tok.encode("dot")  # [CLS] d ##o ##t [SEP]: other words split
    ('the dog', [2, 7, 17, 18, 3])
    """
    from .data.tokenizers import Tokenizer

    letters = sorted(set("".join(words)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *(f"##{c}" for c in letters)]
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return Tokenizer.from_vocab(path)
