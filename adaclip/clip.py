"""CLIP's vision and text towers, laid out as open_clip lays them out, built without open_clip.

Importing open_clip brings in torchvision and, through it, ``torch._dynamo`` and Triton:
about 220 MB of resident memory that inference never uses. AdaCLIP only needs the plain ViT
CLIP, so this module builds it from open_clip's JSON model configs with parameter names
that match open_clip's state dicts one to one. A block's forward pass is here; the passes
through the towers live in :mod:`adaclip.model`, which drives them block by block.

open_clip stays a dependency: its model configs and BPE vocabulary are read from its
installed package folder (found without importing it), and the tests check these towers
against open_clip's own modules.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adaclip.errors import CheckpointError

VISION_SIZES = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16, "head_width": 64}
TEXT_SIZES = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
"""The integer sizes of each tower that AdaCLIP reads, with open_clip's defaults."""

TOWER_EXTRAS = {"mlp_ratio": 4.0, "ls_init_value": None}
"""Other options each tower reads: the MLP's width factor and the layer-scale start value."""

PLAIN_TOP = {"custom_text": False}
PLAIN_COMMON = {
    "patch_dropout": 0.0,  # training-time only
    "final_ln_after_pool": False,
    "output_tokens": False,
    "block_type": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
PLAIN_VISION = {
    **PLAIN_COMMON,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "pool_type": "tok",
    "attentional_pool": False,
    "timm_model_name": None,
}
PLAIN_TEXT = {
    **PLAIN_COMMON,
    "pool_type": "argmax",
    "embed_cls": False,
    "no_causal_mask": False,
    "proj_bias": False,
    "proj_type": "linear",
    "pad_id": 0,
    "hf_model_name": None,
    "hf_tokenizer_name": None,
}
"""Other open_clip options, accepted only at the value that leaves a plain ViT CLIP; any
option not named here changes the architecture and is refused."""


@dataclass(frozen=True)
class TowerConfig:
    """One transformer tower: ``layers`` blocks of ``width`` channels and ``heads`` heads."""

    width: int
    layers: int
    heads: int
    mlp_width: int
    ls_init_value: float | None = None


@dataclass(frozen=True)
class CLIPConfig:
    """A plain ViT CLIP as open_clip's JSON model configs describe it.

    Attributes:
        embed_dim: Width ``E`` of the shared image-text space.
        image_size: The input side the positional grid is built for.
        patch_size: Side of one patch.
        vision: The vision tower.
        context_length: Token positions of the text tower (77).
        vocab_size: BPE vocabulary size.
        text: The text tower.
        quick_gelu: Use ``x * sigmoid(1.702 x)`` instead of GELU in the MLPs.
    """

    embed_dim: int
    image_size: int
    patch_size: int
    vision: TowerConfig
    context_length: int
    vocab_size: int
    text: TowerConfig
    quick_gelu: bool = False

    @classmethod
    def from_dict(cls, raw: dict, source: str) -> CLIPConfig:
        """Reads an open_clip model config, refusing what a plain ViT CLIP cannot be.

        Raises:
            CheckpointError: A required key is missing or an option changes the architecture.
        """
        if not isinstance(raw, dict) or not {"vision_cfg", "text_cfg", "embed_dim"} <= set(raw):
            raise CheckpointError(
                f"{source} is not an open_clip model config: it needs the keys "
                "'embed_dim', 'vision_cfg' and 'text_cfg'."
            )
        vision, text = raw["vision_cfg"], raw["text_cfg"]
        if not isinstance(vision, dict) or not isinstance(text, dict):
            raise CheckpointError(f"{source}: 'vision_cfg' and 'text_cfg' must be objects.")
        top = {"embed_dim": None, "vision_cfg": None, "text_cfg": None, "quick_gelu": False}
        _check_options(raw, {**top, **PLAIN_TOP}, "", source)
        v = _check_options(vision, {**VISION_SIZES, **TOWER_EXTRAS, **PLAIN_VISION}, "vision_cfg.",
                           source)  # fmt: skip
        t = _check_options(text, {**TEXT_SIZES, **TOWER_EXTRAS, **PLAIN_TEXT}, "text_cfg.", source)
        bad = _bad_sizes(raw["embed_dim"], v, t)
        if bad:
            raise CheckpointError(
                f"{source}: AdaCLIP needs positive whole sizes for a square ViT; got "
                f"{', '.join(bad)}."
            )
        return cls(
            embed_dim=raw["embed_dim"],
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            vision=_tower(v, heads=v["width"] // v["head_width"]),
            context_length=t["context_length"],
            vocab_size=t["vocab_size"],
            text=_tower(t, heads=t["heads"]),
            quick_gelu=bool(raw.get("quick_gelu", False)),
        )


def _tower(options: dict, heads: int) -> TowerConfig:
    """A tower from its checked options (the vision tower counts heads by their width)."""
    return TowerConfig(
        width=options["width"],
        layers=options["layers"],
        heads=heads,
        mlp_width=int(options["width"] * options["mlp_ratio"]),
        ls_init_value=options["ls_init_value"],
    )


def _bad_sizes(embed_dim: object, vision: dict, text: dict) -> list[str]:
    """The sizes that are not positive integers (and MLP ratios that are not positive)."""
    sizes = {"embed_dim": embed_dim}
    sizes |= {f"vision_cfg.{k}": vision[k] for k in VISION_SIZES}
    sizes |= {f"text_cfg.{k}": text[k] for k in TEXT_SIZES}
    bad = [f"{k}={n!r}" for k, n in sizes.items() if type(n) is not int or n < 1]
    for where, tower in (("vision_cfg", vision), ("text_cfg", text)):
        ratio = tower["mlp_ratio"]
        if type(ratio) not in (int, float) or ratio <= 0:
            bad.append(f"{where}.mlp_ratio={ratio!r}")
    return bad


def _check_options(part: dict, known: dict, where: str, source: str) -> dict:
    """Refuses options outside ``known`` or, for plain-model options, at another value.

    Returns:
        ``known``'s defaults updated with ``part``'s values.
    """
    plain = {**PLAIN_TOP, **PLAIN_VISION, **PLAIN_TEXT}
    for key, value in part.items():
        readable = key in known and key not in plain
        if readable or (key in known and value == known[key]):
            continue
        raise CheckpointError(
            f"{source} sets {where}{key}={value!r}, which AdaCLIP does not support: it runs "
            "plain ViT CLIP models (such as 'ViT-L-14-336'). Use such a config."
        )
    return {**known, **part}


OPEN_CLIP_PACKAGE = "open_clip"


def open_clip_folder() -> Path:
    """The installed open_clip package folder, found without importing open_clip.

    ``find_spec`` on a top-level name only looks the package up; it runs none of its code.

    Raises:
        CheckpointError: open_clip is not installed.
    """
    spec = importlib.util.find_spec(OPEN_CLIP_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"{OPEN_CLIP_PACKAGE} is not installed; AdaCLIP reads its model configs and its "
            "BPE vocabulary. Install it with `pip install open_clip_torch`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def known_models() -> list[str]:
    """The model names open_clip ships configs for, sorted."""
    return sorted(p.stem for p in (open_clip_folder() / "model_configs").glob("*.json"))


def model_config(name: str) -> CLIPConfig:
    """The config of an open_clip model name or of a local open_clip JSON config file.

    Raises:
        CheckpointError: The name is unknown, the file unreadable, or the model not plain.
    """
    if name.endswith(".json"):
        path = Path(name)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(
                f"cannot read backbone config {path}: {err}. Give an open_clip model name "
                "such as 'ViT-L-14-336' or the path of an open_clip JSON config."
            ) from err
        return CLIPConfig.from_dict(raw, str(path))
    path = open_clip_folder() / "model_configs" / f"{name}.json"
    if "/" in name or not path.is_file():
        raise CheckpointError(
            f"unknown backbone {name!r}. Use an open_clip model name (for example "
            "'ViT-L-14-336') or the path of a JSON config."
        )
    return CLIPConfig.from_dict(json.loads(path.read_text()), f"open_clip config {name!r}")


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that the OpenAI models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """A learned per-channel scale on a block's branch."""

    def __init__(self, width: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention weights in ``nn.MultiheadAttention``'s layout."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)


class Block(nn.Module):
    """A pre-norm residual block: attention, then an MLP, each behind a layer norm."""

    def __init__(self, tower: TowerConfig, quick_gelu: bool) -> None:
        super().__init__()
        width = tower.width
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, tower.heads)
        self.ls_1 = _layer_scale(width, tower.ls_init_value)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, tower.mlp_width),
                gelu=QuickGELU() if quick_gelu else nn.GELU(),
                c_proj=nn.Linear(tower.mlp_width, width),
            )
        )
        self.ls_2 = _layer_scale(width, tower.ls_init_value)

    def forward(
        self, x: torch.Tensor, causal: bool = False, queries: int | None = None
    ) -> torch.Tensor:
        """Runs the block on batch-first tokens with fused attention.

        The residual stream and the layer norms stay in ``x``'s dtype (float32); the
        attention and MLP run in the dtype of their weights, so a block cast with
        :func:`adaclip.backbone.cast_matmuls` computes its matrix products in bf16 or fp16
        without rounding the stream itself.

        Args:
            x: Tokens, ``(B, T, D)``.
            causal: Apply the causal mask (text tower).
            queries: If given, only the first ``queries`` tokens are computed and returned:
                the others would be discarded, and no token attends to them afterwards.

        Returns:
            ``(B, T, D)``, or ``(B, queries, D)`` when ``queries`` is set, in ``x``'s dtype.
        """
        B, T, D = x.shape
        attn = self.attn
        H = attn.num_heads
        dtype = attn.in_proj_weight.dtype
        y = self.ln_1(x).to(dtype)
        q_in = y if queries is None else y[:, :queries]
        Q = q_in.shape[1]
        w_q, w_kv = attn.in_proj_weight[:D], attn.in_proj_weight[D:]
        b_q, b_kv = attn.in_proj_bias[:D], attn.in_proj_bias[D:]
        q = F.linear(q_in, w_q, b_q).reshape(B, Q, H, D // H).transpose(1, 2)  # (B, H, Q, d)
        kv = (
            F.linear(y, w_kv, b_kv).reshape(B, T, 2, H, D // H).permute(2, 0, 3, 1, 4)
        )  # (2, B, H, T, d)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], is_causal=causal)
        out = out.transpose(1, 2).reshape(B, Q, D)  # (B, H, Q, d) -> (B, Q, D)
        x = x[:, :Q] + self.ls_1(attn.out_proj(out)).to(x.dtype)
        return x + self.ls_2(self.mlp(self.ln_2(x).to(dtype))).to(x.dtype)


def _layer_scale(width: int, init_value: float | None) -> nn.Module:
    return nn.Identity() if init_value is None else LayerScale(width, init_value)


class Transformer(nn.Module):
    """A stack of residual blocks (named ``resblocks`` as in the state dicts)."""

    def __init__(self, tower: TowerConfig, quick_gelu: bool) -> None:
        super().__init__()
        self.width = tower.width
        self.resblocks = nn.ModuleList(Block(tower, quick_gelu) for _ in range(tower.layers))


class VisionTower(nn.Module):
    """The ViT image encoder: patch embedding, class token, positional grid, blocks."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width, P = config.vision.width, config.patch_size
        grid = config.image_size // P
        self.patch_size = P
        self.image_size = config.image_size
        self.grid_size = grid
        self.output_dim = config.embed_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=P, stride=P, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(config.vision, config.quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, config.embed_dim))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token first, positions added, after ``ln_pre``.

        Args:
            images: ``(B, 3, S, S)`` with ``S`` the current :attr:`image_size`.

        Returns:
            ``(B, 1 + G*G, Dv)``.
        """
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (B, Dv, G, G) -> (B, G*G, Dv)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)


class CLIP(nn.Module):
    """The two towers; the text tower's parts sit at the top level, as in open_clip."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        width = config.text.width
        self.visual = VisionTower(config)
        # Given its weight, the embedding skips its random init, which on the meta device
        # would import torch._dynamo.
        self.token_embedding = nn.Embedding(
            config.vocab_size, width, _weight=torch.empty(config.vocab_size, width)
        )
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, width))
        self.transformer = Transformer(config.text, config.quick_gelu)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.weights_file: Path | None = None  # where the weights are memory-mapped from

    @torch.no_grad()
    def init_random(self) -> CLIP:
        """Fills the weights with random values from torch's global generator (seed it first)
        and returns the model: for tests and speed measurements, not a training recipe."""
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, LayerScale):
                module.gamma.fill_(0.1)
            elif isinstance(module, (nn.Linear, Attention)):
                for name, tensor in module.named_parameters(recurse=False):
                    if name.endswith("bias"):
                        tensor.zero_()
                    else:
                        tensor.normal_(0.0, 0.02)
        for tensor in (self.visual.conv1.weight, self.token_embedding.weight):
            tensor.normal_(0.0, 0.02)
        for tensor in (self.visual.class_embedding, self.visual.positional_embedding):
            tensor.normal_(0.0, self.visual.transformer.width**-0.5)
        self.positional_embedding.normal_(0.0, 0.01)
        self.visual.proj.normal_(0.0, self.visual.transformer.width**-0.5)
        self.text_projection.normal_(0.0, self.transformer.width**-0.5)
        self.logit_scale.fill_(math.log(1 / 0.07))
        return self
