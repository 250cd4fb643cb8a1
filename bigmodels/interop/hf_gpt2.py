"""Hugging Face GPT-2 <-> bigmodels GPT: config fields, parameter names, Conv1D transposes.

Hugging Face's GPT-2 keeps OpenAI's TensorFlow layout: its ``Conv1D`` layers store weights as (in, out),
the transpose of ``nn.Linear``'s (out, in), so those four matrices per block are transposed both ways.
Old checkpoints also carry the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``, which are dropped.
``GPT2Model`` checkpoints (no ``transformer.`` prefix, no ``lm_head``) load too when the weights are tied.
A GPT whose vocabulary is padded (``pad_vocab_multiple``) gets zero rows appended to the embedding and
output matrices on load and loses them on export, so the Hugging Face weights round-trip exactly.

    >>> import bigmodels, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = bigmodels.save(bigmodels.create_model("gpt_mini"), d, format="hf")   # GPT2LMHeadModel.from_pretrained(d)
    >>> bigmodels.load(d).config.n_layer
    4
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models.gpt import GPTConfig
from ..registry import get_spec, list_models
from . import HFAdapter

log = logging.getLogger(__name__)

# per block: (bigmodels name, Hugging Face name, Conv1D weight stored (in, out) -> transpose)
_BLOCK_KEYS = (
    ("ln_1.weight", "ln_1.weight", False),
    ("ln_1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.out_proj.weight", "attn.c_proj.weight", True),
    ("attn.out_proj.bias", "attn.c_proj.bias", False),
    ("ln_2.weight", "ln_2.weight", False),
    ("ln_2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
)
_TOP_KEYS = (
    ("wte.weight", "transformer.wte.weight", False),
    ("wpe.weight", "transformer.wpe.weight", False),
    ("ln_f.weight", "transformer.ln_f.weight", False),
    ("ln_f.bias", "transformer.ln_f.bias", False),
)
_BUFFERS = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")  # causal masks of old checkpoints

_ACTIVATIONS_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_ACTIVATIONS_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# options GPT has no equivalent for: name -> the value our architecture implies
_FIXED_OPTIONS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                  "reorder_and_upcast_attn": False, "add_cross_attention": False}
_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
_VOCAB_ROWS = ("wte.weight", "lm_head.weight")  # (vocab, C) matrices: padded rows exist only in bigmodels


def _key_map(n_layer: int) -> list[tuple[str, str, bool]]:
    """(ours, Hugging Face, transpose) for every parameter of an ``n_layer`` GPT (lm_head aside)."""
    blocks = [(f"blocks.{i}.{ours}", f"transformer.h.{i}.{hf}", t)
              for i in range(n_layer) for ours, hf, t in _BLOCK_KEYS]
    return [*_TOP_KEYS, *blocks]


def config_from_hf(hf: dict[str, Any], directory: Path) -> tuple[str, str, Any]:
    for option, ours in _FIXED_OPTIONS.items():
        if hf.get(option, ours) != ours:
            raise CheckpointError(
                f"{directory}: Hugging Face GPT-2 option {option}={hf[option]!r} is not supported (bigmodels GPT "
                f"implements {option}={ours}); convert the checkpoint or load it with transformers"
            )
    unknown_arch = [a for a in hf.get("architectures") or [] if a not in _ARCHITECTURES]
    if unknown_arch:
        raise CheckpointError(
            f"{directory}: architecture {unknown_arch[0]!r} is not supported; bigmodels loads "
            f"{' and '.join(_ARCHITECTURES)} checkpoints (a language model head)"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS_FROM_HF:
        raise CheckpointError(
            f"{directory}: activation_function={act!r} is not supported; bigmodels GPT implements "
            f"{', '.join(_ACTIVATIONS_FROM_HF)}"
        )
    n_embd = hf.get("n_embd", 768)
    dropouts = {k: hf.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(dropouts.values())) > 1:
        log.warning("%s: one dropout rate is used for all of %s; taking resid_pdrop", directory, dropouts)
    try:
        config = GPTConfig(
            vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
            dropout=dropouts["resid_pdrop"], bias=True, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=_ACTIVATIONS_FROM_HF[act], tie_weights=hf.get("tie_word_embeddings", True),
            mlp_ratio=(hf.get("n_inner") or 4 * n_embd) / n_embd,
        )
    except ConfigError as e:
        raise CheckpointError(f"{directory}/config.json does not give a valid GPT: {e}") from None
    same_shape = [n for n in list_models("gpt2*") if get_spec(n).config == config]  # report "gpt2" for GPT-2
    return (same_shape[0] if same_shape else "gpt2"), "language_modeling", config


def _check_expressible(config: Any) -> None:
    for key, needed in (("position", "learned"), ("bias", True)):
        if getattr(config, key) != needed:
            raise CheckpointError(
                f"a GPT with {key}={getattr(config, key)!r} has no Hugging Face GPT-2 equivalent (which needs "
                f"{key}={needed!r}); save it with format='bigmodels'"
            )


def config_to_hf(model: nn.Module) -> dict[str, Any]:
    c = model.config
    _check_expressible(c)
    eos = 50256 if c.vocab_size == 50257 else None  # GPT-2's <|endoftext|>; unknown for other vocabularies
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.mlp_hidden,
        "activation_function": _ACTIVATIONS_TO_HF[c.activation],
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": c.tie_weights,
        "use_cache": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def state_from_hf(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    if not any(k.startswith("transformer.") for k in state):  # a GPT2Model checkpoint: no prefix
        state = {f"transformer.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not _BUFFERS.match(k)}
    out: dict[str, torch.Tensor] = {}
    for ours, hf, transpose in _key_map(config.n_layer):
        if hf in state:
            w = state.pop(hf)
            out[ours] = w.t().contiguous() if transpose else w
    head = state.pop("lm_head.weight", state.pop("transformer.lm_head.weight", None))
    if config.tie_weights and "wte.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]  # tied: the embedding is the output layer
    elif head is not None:
        out["lm_head.weight"] = head
    extra = config.padded_vocab_size - config.vocab_size
    for key in _VOCAB_ROWS:
        w = out.get(key)
        if extra and w is not None and w.size(0) == config.vocab_size:  # (V, C) -> (V_padded, C), zero rows
            out[key] = torch.cat([w, w.new_zeros(extra, w.size(1))])
    if config.tie_weights and "lm_head.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]
    out.update(state)  # anything left is unexpected: load_hf reports it by name
    return out


def state_to_hf(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    _check_expressible(model.config)
    V = model.config.vocab_size
    state = {k: v[:V] if k in _VOCAB_ROWS else v for k, v in state.items()}  # padded rows are no tokens
    out = {hf: state[ours].t() if transpose else state[ours] for ours, hf, transpose in _key_map(model.config.n_layer)}
    if not model.config.tie_weights:  # tied: transformers re-ties lm_head to wte (and safetensors refuses twins)
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


ADAPTER = HFAdapter("gpt2", "gpt", config_from_hf, config_to_hf, state_from_hf, state_to_hf)
