"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929).

An image is cut into non-overlapping P x P patches, each embedded linearly (a stride-P convolution); a
learned class token is prepended, learned positions are added, and a stack of pre-LN Transformer encoder
blocks mixes the tokens::

    x (B, C, H, W) -> conv_proj -> (B, N, D), N = (H/P)(W/P) -> [class_token; patches] + pos_embedding (B, N+1, D)
      -> L x [x + attn(ln_1(x)); x + mlp(ln_2(x))] -> encoder.ln -> pool (class token | mean of patches)
      -> [heads.pre_logits -> tanh] -> heads.head

Parameter names are torchvision's ``VisionTransformer`` (``conv_proj``, ``class_token``,
``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight``, ...), so its
state dicts load strictly; ``interop/hf_vit.py`` maps Hugging Face ``transformers`` ViT checkpoints.

The position embeddings fix the input resolution. :meth:`VisionTransformer.set_img_size` (or
:func:`resize_pos_embed`, which also takes a state dict) interpolates their grid bicubically, keeping the
class token's position, as torchvision's ``interpolate_embeddings`` does.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError, DataError
from ..nn import AttentionProbs, check_image_input, scaled_dot_product_attention
from ..nn.attention import ATTENTION_IMPLS
from ..registry import register_family, register_model

__all__ = ["ViTConfig", "VisionTransformer", "SelfAttention", "EncoderBlock", "interpolate_pos_embedding",
           "resize_pos_embed"]


@dataclass
class ViTConfig:
    """ViT hyper-parameters under torchvision's names (``image_size`` is ``img_size``, as in the rest of bigmodels)."""

    img_size: int = 224  # square inputs, img_size x img_size
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    dropout: float = 0.0  # on the embedded tokens, after attention and in the MLP
    attention_dropout: float = 0.0  # on the attention weights
    num_classes: int = 1000  # 0: no classifier (forward returns the pooled features)
    representation_size: int | None = None  # a pre_logits Linear + tanh before the head (ViT's pretraining head)
    in_chans: int = 3
    layer_norm_eps: float = 1e-6  # torchvision and timm; Hugging Face's ViTConfig defaults to 1e-12
    attn_impl: str = "sdpa"  # sdpa | reference
    pool: str = "cls"  # cls: the class token (the paper, torchvision) | mean: the mean of the patch tokens

    def __post_init__(self) -> None:
        check_choice("vit", "attn_impl", self.attn_impl, ATTENTION_IMPLS)
        check_choice("vit", "pool", self.pool, ("cls", "mean"))
        for key in ("img_size", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim", "in_chans",
                    "representation_size", "layer_norm_eps"):
            check_positive("vit", key, getattr(self, key))
        check_positive("vit", "num_classes", self.num_classes, allow_zero=True)
        for key in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"vit.{key}={getattr(self, key)!r} must be in [0, 1)")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"vit.img_size={self.img_size} is not a multiple of vit.patch_size={self.patch_size}; use an "
                f"img_size of {_nearest_multiple(self.img_size, self.patch_size)} (data.img_size resizes the "
                "images) or a patch_size that divides it"
            )
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"vit.hidden_dim={self.hidden_dim} must be divisible by vit.num_heads={self.num_heads}; "
                              "change either so that each head gets hidden_dim / num_heads features")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size


def _nearest_multiple(n: int, m: int) -> int:
    return max(m, round(n / m) * m)


# ---------------------------------------------------------------------------------------------- blocks


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout (``in_proj_weight`` = the
    stacked [W_q; W_k; W_v] (3D, D), ``in_proj_bias``, ``out_proj``), computed by the project's
    :func:`~bigmodels.nn.scaled_dot_product_attention` (``impl``: sdpa | reference). On the reference path
    the attention weights pass through ``probs`` (an :class:`~bigmodels.nn.AttentionProbs`, hookable).

    >>> SelfAttention(64, 4)(torch.randn(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    """

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0, impl: str = "sdpa") -> None:
        super().__init__()
        assert dim % num_heads == 0  # ViTConfig checks it
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.impl = impl
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.probs = AttentionProbs(dropout)  # attention dropout on the weights (B, nh, T, T)
        # nn.MultiheadAttention's initialisation
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, *, return_weights: bool = False):
        """x (B, T, D) -> (B, T, D); with ``return_weights`` also the (B, nh, T, T) attention weights."""
        B, T, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3 nh hs)
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        y, weights = scaled_dot_product_attention(
            q, k, v, dropout_p=self.probs.p if self.probs.training else 0.0, impl=self.impl,
            return_weights=return_weights, probs=self.probs,
        )
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))  # (B, T, D)
        return (y, weights) if return_weights else y

    # structured pruning (bigmodels.compress.prune_structured_) of whole heads: fewer heads, the same width D

    def head_views(self) -> list[tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
        """The tensors holding the heads, each with a function viewing a tensor of its shape as (nh, ...)."""
        nh, hs = self.num_heads, self.head_dim

        def stacked(t: torch.Tensor) -> torch.Tensor:  # (3 nh hs, ...) = [q; k; v] -> (nh, 3, hs, ...)
            return t.reshape(3, nh, hs, *t.shape[1:]).transpose(0, 1)

        return [(self.in_proj_weight, stacked), (self.in_proj_bias, stacked),
                (self.out_proj.weight, lambda t: t.t().reshape(nh, hs, -1))]

    def keep_heads_(self, heads: torch.Tensor) -> None:
        """Keep only ``heads`` (indices, ascending), in place: new q/k/v rows and out_proj columns."""
        hs, inner = self.head_dim, self.num_heads * self.head_dim
        units = (heads[:, None] * hs + torch.arange(hs)).flatten()  # the kept heads' features, in order
        rows = torch.cat([units + i * inner for i in range(3)])
        for name in ("in_proj_weight", "in_proj_bias"):
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(old[rows].detach().clone(), requires_grad=old.requires_grad))
        w = self.out_proj.weight
        self.out_proj.weight = nn.Parameter(w[:, units].detach().clone(), requires_grad=w.requires_grad)
        self.out_proj.in_features = len(units)
        self.num_heads = len(heads)


def _mlp(c: ViTConfig) -> nn.Sequential:
    """torchvision's MLPBlock: Linear, GELU (exact), Dropout, Linear, Dropout (so weights sit at .0 and .3)."""
    mlp = nn.Sequential(nn.Linear(c.hidden_dim, c.mlp_dim), nn.GELU(), nn.Dropout(c.dropout),
                        nn.Linear(c.mlp_dim, c.hidden_dim), nn.Dropout(c.dropout))
    for m in (mlp[0], mlp[3]):
        nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(m.bias, std=1e-6)
    return mlp


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.hidden_dim, eps=c.layer_norm_eps)
        self.self_attention = SelfAttention(c.hidden_dim, c.num_heads, dropout=c.attention_dropout, impl=c.attn_impl)
        self.dropout = nn.Dropout(c.dropout)
        self.ln_2 = nn.LayerNorm(c.hidden_dim, eps=c.layer_norm_eps)
        self.mlp = _mlp(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))  # (B, N+1, D)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Learned positions, the blocks and the final norm (torchvision's ``encoder``).

    ``forward`` returns the tokens after each block, [(B, N+1, D)] x num_layers, before ``ln``.
    """

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        seq_len = c.grid_size**2 + 1  # patches + the class token
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_len, c.hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.Sequential(OrderedDict((f"encoder_layer_{i}", EncoderBlock(c)) for i in range(c.num_layers)))
        self.ln = nn.LayerNorm(c.hidden_dim, eps=c.layer_norm_eps)

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        x = self.dropout(tokens + self.pos_embedding)  # (B, N+1, D)
        out = []
        for block in self.layers:
            x = block(x)
            out.append(x)
        return out


def _heads(c: ViTConfig, num_classes: int) -> nn.Sequential:
    heads: OrderedDict[str, nn.Module] = OrderedDict()
    width = c.hidden_dim
    if c.representation_size is not None:
        heads["pre_logits"] = nn.Linear(width, c.representation_size)
        nn.init.trunc_normal_(heads["pre_logits"].weight, std=math.sqrt(1 / width))
        nn.init.zeros_(heads["pre_logits"].bias)
        heads["act"] = nn.Tanh()
        width = c.representation_size
    heads["head"] = _classifier(width, num_classes)
    return nn.Sequential(heads)


def _classifier(width: int, num_classes: int) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    head = nn.Linear(width, num_classes)
    nn.init.zeros_(head.weight)  # torchvision and timm start the classifier at zero
    nn.init.zeros_(head.bias)
    return head


# ---------------------------------------------------------------------------------------------- resolution


def interpolate_pos_embedding(pos_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + grid_size**2, D): the patch positions resampled bicubically as a g x g image
    (align_corners=True, as torchvision's ``interpolate_embeddings``); the class token's position is kept."""
    cls_pos, grid = pos_embedding[:, :1], pos_embedding[:, 1:]  # (1, 1, D), (1, g*g, D)
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ConfigError(f"the position embedding has {grid.shape[1]} patch positions, not a square grid; "
                          "only square ViT grids can be resized")
    if old == grid_size:
        return pos_embedding
    D = grid.shape[-1]
    grid = grid.transpose(1, 2).reshape(1, D, old, old).float()  # (1, D, g, g): bicubic wants fp32 on CPU
    grid = F.interpolate(grid, size=grid_size, mode="bicubic", align_corners=True)  # (1, D, g', g')
    grid = grid.reshape(1, D, grid_size * grid_size).transpose(1, 2).to(pos_embedding.dtype)  # (1, g'*g', D)
    return torch.cat([cls_pos, grid], dim=1)


def _check_new_size(img_size: int, patch_size: int) -> None:
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size <= 0 or img_size % patch_size:
        raise ConfigError(f"img_size={img_size!r} must be a positive multiple of the patch size {patch_size}, "
                          f"e.g. {_nearest_multiple(img_size if isinstance(img_size, int) else 0, patch_size)}")


def resize_pos_embed(target, img_size: int):
    """Adapt ViT weights to ``img_size`` x ``img_size`` inputs by interpolating the position embeddings.

    ``target``: a :class:`VisionTransformer` (resized in place through :meth:`~VisionTransformer.set_img_size`
    and returned) or a torchvision-layout state dict (a new dict is returned, the patch size read from
    ``conv_proj.weight``). To load weights trained at another resolution into a model::

        model.load_state_dict(resize_pos_embed(state_dict, model.config.img_size))
    """
    if isinstance(target, VisionTransformer):
        target.set_img_size(img_size)
        return target
    if "encoder.pos_embedding" not in target or "conv_proj.weight" not in target:
        raise ConfigError("resize_pos_embed takes a VisionTransformer or its state dict (with encoder.pos_embedding "
                          f"and conv_proj.weight); got keys {sorted(target)[:5]}")
    patch_size = target["conv_proj.weight"].shape[-1]
    _check_new_size(img_size, patch_size)
    return {**target, "encoder.pos_embedding": interpolate_pos_embedding(target["encoder.pos_embedding"],
                                                                          img_size // patch_size)}


# ---------------------------------------------------------------------------------------------- model


class VisionTransformer(nn.Module):
    """ViT following the vision contract; torchvision's parameter names.

    >>> model = VisionTransformer(ViTConfig(img_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
    ...                                     mlp_dim=64, num_classes=5))
    >>> model(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 5])
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = self.config = config
        self.num_features = c.hidden_dim
        self.conv_proj = nn.Conv2d(c.in_chans, c.hidden_dim, kernel_size=c.patch_size, stride=c.patch_size)
        fan_in = c.in_chans * c.patch_size**2
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        self.class_token = nn.Parameter(torch.zeros(1, 1, c.hidden_dim))
        self.encoder = Encoder(c)
        self.heads = _heads(c, c.num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.config
        try:
            check_image_input(x, c.in_chans, c.img_size)
        except DataError as e:
            side = x.shape[-1] if x.dim() == 4 else 0
            if side and x.shape[-2] == side and side % c.patch_size == 0 and x.shape[1] == c.in_chans:
                raise DataError(f"{e}, or call model.set_img_size({side}) to interpolate the position embeddings "
                                "of this model") from None
            raise

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the class token and the patch embeddings (B, N+1, D), positions not yet added."""
        self._check_input(x)
        x = self.conv_proj(x)  # (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1)  # (B, N+1, D)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The token sequence after each encoder block, before the final norm: [(B, N+1, D)] x num_layers,
        the class token at index 0 and the patches in row-major order after it."""
        return self.encoder(self._embed(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final normed tokens (B, N+1, D)."""
        return self.encoder.ln(self.forward_intermediates(x)[-1])

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N+1, D) -> pooled (B, D) -> [pre_logits, tanh] -> logits (B, num_classes)."""
        pooled = feats[:, 0] if self.config.pool == "cls" else feats[:, 1:].mean(dim=1)  # (B, D)
        return self.heads(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new zero-initialised classifier with ``num_classes`` outputs (0: none); pre_logits is kept."""
        check_positive("vit", "num_classes", num_classes, allow_zero=True)
        self.config.num_classes = num_classes
        width = self.config.representation_size or self.config.hidden_dim
        self.heads.head = _classifier(width, num_classes).to(self.class_token.device, self.class_token.dtype)

    def set_img_size(self, img_size: int) -> None:
        """Take ``img_size`` x ``img_size`` inputs from now on: the grid of position embeddings is interpolated
        bicubically (the class token's position unchanged) and ``config.img_size`` updated. The embedding
        becomes a new Parameter: build the optimizer after this call.

        >>> model = VisionTransformer(ViTConfig(img_size=32, patch_size=8, num_layers=1, num_heads=2,
        ...                                     hidden_dim=32, mlp_dim=64, num_classes=5))
        >>> model.set_img_size(48)
        >>> model(torch.zeros(1, 3, 48, 48)).shape
        torch.Size([1, 5])
        """
        _check_new_size(img_size, self.config.patch_size)
        if img_size != self.config.img_size:
            old = self.encoder.pos_embedding
            with torch.no_grad():
                new = interpolate_pos_embedding(old.detach(), img_size // self.config.patch_size)
            self.encoder.pos_embedding = nn.Parameter(new, requires_grad=old.requires_grad)
        self.config.img_size = img_size


register_family("vit", ViTConfig, VisionTransformer)

_B = dict(num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)  # ViT-Base
_L = dict(num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096)  # ViT-Large
for _name, _cfg, _what in (
    ("vit_b_16", ViTConfig(patch_size=16, **_B), "ViT-B/16 (torchvision's vit_b_16): 86.6M parameters at 224 px"),
    ("vit_b_32", ViTConfig(patch_size=32, **_B), "ViT-B/32 (torchvision's vit_b_32): 88.2M parameters at 224 px"),
    ("vit_l_16", ViTConfig(patch_size=16, **_L), "ViT-L/16 (torchvision's vit_l_16): 304M parameters at 224 px"),
    ("vit_s_16", ViTConfig(patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536),
     "ViT-S/16 (timm's vit_small_patch16_224 sizes): 22M parameters at 224 px"),
):
    register_model(_name, family="vit", task="image_classification", config=_cfg, description=_what, compare=False)
register_model(
    "vit_mini", family="vit", task="image_classification",
    config=ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=10, num_layers=4, num_heads=4, hidden_dim=64,
                     mlp_dim=128),
    description="a 4-layer, 64-wide ViT on 2x2 patches, for 8x8 grayscale images (136K parameters)",
)
