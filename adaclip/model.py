"""The AdaCLIP module: hybrid prompts, prompted CLIP encoders, patch and image heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adaclip import prompts
from adaclip.clip import CLIP
from adaclip.config import AdaCLIPConfig
from adaclip.fusion import cluster_centres, select_points


class StaticPrompts(nn.Module):
    """Learned prompt tokens, one ``(M, D)`` matrix per prompted block."""

    def __init__(self, depth: int, length: int, width: int) -> None:
        super().__init__()
        self.static_prompts = nn.ParameterList(
            nn.Parameter(torch.empty(length, width).normal_(0.0, 0.02)) for _ in range(depth)
        )


class Heads(nn.Module):
    """A list of linear heads under the attribute name the reference checkpoints use."""

    def __init__(self, count: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.head = nn.ModuleList(nn.Linear(in_features, out_features) for _ in range(count))

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """Applies every head to ``x`` ``(B, in)`` and stacks them: ``(B, count, out)``."""
        return torch.stack([head(x) for head in self.head], dim=1)


@dataclass
class Encoded:
    """A batch encoded up to the fusion step.

    Attributes:
        patches: L2-normalised patch features per output layer, ``(B, N, L, E)``.
        image: L2-normalised image features before fusion, ``(B, E)``.
        text: Normal and abnormal text features per image, ``(B, E, 2)``.
        logits: Scaled patch-text similarities per layer, ``(B, N, L, 2)``.
    """

    patches: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor
    logits: torch.Tensor


@dataclass
class AdaCLIPOutput:
    """What one forward pass returns for a batch of ``B`` images.

    Attributes:
        scores: Image anomaly scores, ``(B,)`` in [0, 1].
        maps: Anomaly maps before smoothing, ``(B, S, S)`` in [0, 1].
        image_logits: Scaled image-text similarities, ``(B, 2)`` (normal, abnormal).
        layer_logits: Scaled patch-text similarities per output layer, ``(B, N, 2, G, G)``.
    """

    scores: torch.Tensor
    maps: torch.Tensor
    image_logits: torch.Tensor
    layer_logits: torch.Tensor


class AdaCLIP(nn.Module):
    """AdaCLIP on a frozen open_clip backbone (METHOD.md sections 3-7).

    The learnable parts carry the attribute names of the reference checkpoints, so
    :meth:`learnable_state_dict` and :meth:`load_learnable` map to them one to one.
    ``forward`` stores nothing on the module: any number of threads may call it.
    """

    def __init__(self, clip: CLIP, config: AdaCLIPConfig) -> None:
        super().__init__()
        visual = clip.visual
        if visual.image_size != config.image_size:
            raise ValueError(
                f"backbone is sized for {visual.image_size} px but config.image_size is "
                f"{config.image_size}; build it with load_backbone(image_size=...)."
            )
        J, M, N = config.prompt_depth, config.prompt_length, config.num_output_layers
        Dv, Dt, E = visual.transformer.width, clip.transformer.width, visual.output_dim
        layers = len(visual.transformer.resblocks)
        if layers < N or min(layers, len(clip.transformer.resblocks)) < J:
            raise ValueError(f"a {layers}-block backbone cannot take {N} outputs and depth {J}.")
        self.config = config
        self.clip = clip.eval().requires_grad_(False)
        self.visual_prompter = StaticPrompts(J, M, Dv)
        self.text_prompter = StaticPrompts(J, M, Dt)
        self.dynamic_visual_prompt_generator = Heads(M, E, Dv)
        self.dynamic_text_prompt_generator = Heads(M, E, Dt)
        self.patch_token_layer = Heads(N, Dv, E)
        self.cls_token_layer = Heads(1, E, E)
        self.output_layers = [i - 1 for i in range(1, layers + 1) if i % (layers // N) == 0][:N]

    @property
    def grid_size(self) -> int:
        """Side ``G`` of the patch grid."""
        return self.clip.visual.grid_size

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        """The learnable tensors under their names in this module (no ``clip.`` entries)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def load_learnable(self, state: dict[str, torch.Tensor]) -> None:
        """Loads every learnable tensor, and only those; the shared backbone is not touched.

        ``state`` uses this module's names (see :func:`adaclip.checkpoint_io.check_state`,
        which turns a checkpoint into them with clear messages).

        Raises:
            ValueError: A learnable tensor is missing or a key is not a learnable one.
        """
        own = self.learnable_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"learnable state mismatch: missing {missing}, unexpected {unexpected}"
            )
        self.load_state_dict(state, strict=False)  # size mismatches still raise

    def train(self, mode: bool = True) -> AdaCLIP:
        """Switches the learnable parts; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def forward(self, images: torch.Tensor, class_names: Sequence[str]) -> AdaCLIPOutput:
        """Scores a batch of preprocessed images against their class names.

        Args:
            images: Normalised images, ``(B, 3, S, S)``, float32.
            class_names: One normalised class name per image.

        Returns:
            Scores, raw maps and the logits behind them; see :class:`AdaCLIPOutput`.
        """
        encoded = self.encode(images, class_names)
        fused = self.cluster(self.fusion_points(encoded)) if self.config.use_hsf else None
        return self.finish(encoded, fused)

    def encode(self, images: torch.Tensor, class_names: Sequence[str]) -> Encoded:
        """Everything before the fusion clustering: the accelerator-heavy part of a pass."""
        B = images.shape[0]
        if len(class_names) != B:
            raise ValueError(f"need one class name per image; got {len(class_names)} for {B}.")
        tokens = self.clip.visual.embed(images)  # (B, 1+L, Dv)
        pooled_plain = self.encode_image_plain(tokens)
        visual_prompts, text_prompts = self.hybrid_prompts(pooled_plain)
        patch_tokens, pooled = self.encode_image_prompted(tokens, visual_prompts)
        text = self.encode_text(class_names, text_prompts)

        heads = self.patch_token_layer.head
        patches = torch.stack(
            [F.normalize(h(t.float()), dim=-1) for h, t in zip(heads, patch_tokens)], dim=1
        )  # N x (B, L, E) -> (B, N, L, E)
        image = F.normalize(self.cls_token_layer.head[0](pooled.float()), dim=-1)  # (B, E)
        logits = self.config.logit_scale * torch.einsum("bnle,bec->bnlc", patches, text)
        return Encoded(patches=patches, image=image, text=text, logits=logits)

    def fusion_points(self, encoded: Encoded) -> np.ndarray:
        """The most abnormal patches of each image as clustering input (waits for the device).

        Returns:
            ``(B, k, N*E)`` float32, most abnormal patch first.
        """
        cfg = self.config
        probs = encoded.logits.mean(dim=1).softmax(dim=-1)[..., 1]  # (B, N, L, 2) -> (B, L)
        topk = cfg.hsf_topk_factor * cfg.hsf_clusters
        return select_points(probs, encoded.patches, topk).detach().float().cpu().numpy()

    def cluster(self, points: np.ndarray) -> torch.Tensor:
        """Hybrid semantic fusion's K-means on the CPU: ``(B, k, N*E) -> (B, E)`` normalised."""
        cfg = self.config
        fused = cluster_centres(points, cfg.hsf_clusters, cfg.kmeans_seed, cfg.num_output_layers)
        return F.normalize(torch.from_numpy(fused), dim=-1)

    def finish(self, encoded: Encoded, fused: torch.Tensor | None) -> AdaCLIPOutput:
        """Image scores and maps from the encoded batch and, with HSF, the fused features.

        Args:
            encoded: The output of :meth:`encode`.
            fused: ``(B, E)`` from :meth:`cluster`, or ``None`` to skip the fusion.
        """
        cfg = self.config
        image = encoded.image
        if fused is not None:
            fused = fused.to(image.device, image.dtype)
            image = F.normalize(cfg.hsf_alpha * fused + (1.0 - cfg.hsf_alpha) * image, dim=-1)
        image_logits = cfg.logit_scale * torch.einsum("be,bec->bc", image, encoded.text)

        B, N = encoded.logits.shape[:2]
        G = self.grid_size
        layer_logits = encoded.logits.transpose(2, 3).reshape(B, N, 2, G, G)  # from (B, N, L, 2)
        return AdaCLIPOutput(
            scores=image_logits.softmax(dim=-1)[:, 1],
            maps=self.anomaly_map(layer_logits),
            image_logits=image_logits,
            layer_logits=layer_logits,
        )

    def encode_image_plain(self, tokens: torch.Tensor) -> torch.Tensor:
        """The prompt-free CLIP image feature ``g`` (projected, not normalised), ``(B, E)``.

        Only the class token leaves the last block, so that block attends from it alone.
        """
        visual = self.clip.visual
        blocks = visual.transformer.resblocks
        x = tokens
        for block in blocks[:-1]:
            x = block(x)
        cls = blocks[-1](x, queries=1)[:, 0]  # (B, Dv)
        return visual.ln_post(cls) @ visual.proj

    def hybrid_prompts(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Static plus per-image dynamic prompts for every prompted block.

        Args:
            pooled: Plain image features ``g``, ``(B, E)``.

        Returns:
            Visual prompts ``(J, B, M, Dv)`` and text prompts ``(J, B, M, Dt)``: the fp32
            sums rounded to float16 precision (as the reference does), held in float32.
        """
        pooled32 = pooled.float()
        result = []
        for generator, static in (
            (self.dynamic_visual_prompt_generator, self.visual_prompter),
            (self.dynamic_text_prompt_generator, self.text_prompter),
        ):
            dynamic = generator.stacked(pooled32)  # (B, M, D)
            hybrid = [(dynamic + p.float()).half().float() for p in static.static_prompts]
            result.append(torch.stack(hybrid))  # J x (B, M, D) -> (J, B, M, D)
        return result[0], result[1]

    def encode_image_prompted(
        self, tokens: torch.Tensor, prompts_: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The prompted vision pass (METHOD.md section 5).

        Args:
            tokens: Embedded image tokens after ``ln_pre``, ``(B, 1+L, Dv)``.
            prompts_: Hybrid visual prompts, ``(J, B, M, Dv)``.

        Returns:
            Patch tokens of each output layer ``N x (B, L, Dv)`` and the pooled feature ``(B, E)``.
        """
        visual = self.clip.visual
        J = prompts_.shape[0]
        L = tokens.shape[1] - 1
        x = torch.cat([tokens, prompts_[0]], dim=1)  # (B, 1+L+M, Dv)
        outputs = []
        for i, block in enumerate(visual.transformer.resblocks):
            if 0 < i < J:
                x = torch.cat([x[:, : 1 + L], prompts_[i]], dim=1)
            x = block(x)
            if i in self.output_layers:
                outputs.append(x[:, 1 : 1 + L])
        pooled = visual.ln_post(x[:, 0]) @ visual.proj
        return outputs, pooled

    def encode_text(self, class_names: Sequence[str], prompts_: torch.Tensor) -> torch.Tensor:
        """The prompted text features of each image (METHOD.md section 6).

        Args:
            class_names: One normalised class name per image.
            prompts_: Hybrid text prompts, ``(J, B, M, Dt)``.

        Returns:
            ``(B, E, 2)``: per image, the normal and abnormal text feature, L2-normalised.
        """
        clip = self.clip
        J, B, M, Dt = prompts_.shape
        encoded = [prompts.tokenize_class(name) for name in class_names]
        tokens = torch.stack([t for t, _ in encoded])  # (B, S, 77), on the CPU
        S = tokens.shape[1]
        eot = prompts.eot_positions(tokens)  # (B, S)
        T = max(int(eot.max()) + 1, M + 1)  # exact: causal attention never looks past the EOT
        # Cut and moved on the CPU side, so no device round trip stalls the forward pass.
        tokens, eot = tokens[:, :, :T].to(prompts_.device), eot.to(prompts_.device)
        x = clip.token_embedding(tokens).float()  # (B, S, T, Dt)
        x = (x + clip.positional_embedding[:T]).reshape(B * S, T, Dt)
        for i, block in enumerate(clip.transformer.resblocks):
            if 0 < i < J:
                prompt = prompts_[i].repeat_interleave(S, dim=0)  # (B, M, Dt) -> (B*S, M, Dt)
                x = torch.cat([x[:, :1], prompt, x[:, 1 + M :]], dim=1)
            x = block(x, causal=True)
        x = x.reshape(B, S, T, Dt)  # (B*S, T, Dt) -> (B, S, T, Dt)
        end = x.gather(2, eot[:, :, None, None].expand(B, S, 1, Dt)).squeeze(2)  # (B, S, Dt)
        features = F.normalize(clip.ln_final(end) @ clip.text_projection, dim=-1)  # (B, S, E)
        num_normal = encoded[0][1]
        states = torch.stack(
            [features[:, :num_normal].mean(dim=1), features[:, num_normal:].mean(dim=1)], dim=-1
        )  # (B, E, 2)
        return F.normalize(states, dim=1)

    def anomaly_map(self, layer_logits: torch.Tensor) -> torch.Tensor:
        """Upsamples the per-layer logits to ``S x S`` and returns the abnormal probability.

        Args:
            layer_logits: ``(B, N, 2, G, G)``.

        Returns:
            ``(B, S, S)`` in [0, 1]. Bilinear upsampling is linear, so averaging the
            layers first and upsampling once is the same map at a quarter of the cost.
        """
        S = self.config.image_size
        mean = layer_logits.mean(dim=1)  # (B, N, 2, G, G) -> (B, 2, G, G)
        up = F.interpolate(mean.float(), size=(S, S), mode="bilinear", align_corners=True)
        return up.softmax(dim=1)[:, 1]
