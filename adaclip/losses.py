"""The training losses of AdaCLIP (METHOD.md section 8): focal and Dice losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaclip.model import AdaCLIPOutput

EPS = 1e-8


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on class probabilities, averaged over every element.

    Args:
        probs: Class probabilities, ``(B, C)`` or ``(B, C, H, W)``, summing to 1 over ``C``.
        target: Class indices, ``(B,)`` or ``(B, H, W)``, int64.
        gamma: Focusing exponent; 0 gives the cross-entropy.

    Returns:
        A scalar: the mean of ``-(1 - p_t)^gamma * log(p_t)``.
    """
    picked = probs.gather(1, target.unsqueeze(1)).squeeze(1)  # p_t, (B,) or (B, H, W)
    picked = picked.clamp(min=EPS)
    return -((1.0 - picked) ** gamma * picked.log()).mean()


def dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, averaged over the batch.

    Args:
        probs: Predicted probabilities, ``(B, H, W)`` in [0, 1].
        target: Ground truth, ``(B, H, W)`` in {0, 1}.
        smooth: Added to numerator and denominator so empty masks are handled.

    Returns:
        A scalar in [0, 1).
    """
    B = probs.shape[0]
    p, t = probs.reshape(B, -1), target.reshape(B, -1)  # (B, H, W) -> (B, H*W)
    overlap = 2.0 * (p * t).sum(dim=1) + smooth
    return (1.0 - overlap / (p.sum(dim=1) + t.sum(dim=1) + smooth)).mean()


def layer_probs(layer_logits: torch.Tensor, size: int) -> torch.Tensor:
    """Per-layer 2-channel maps at ``size x size``, softmaxed per layer.

    Args:
        layer_logits: ``(B, N, 2, G, G)``.
        size: Side ``S`` of the output.

    Returns:
        ``(B, N, 2, S, S)`` float32 probabilities (normal, abnormal).
    """
    B, N, C, G, _ = layer_logits.shape
    flat = layer_logits.float().reshape(B * N, C, G, G)  # (B, N, 2, G, G) -> (B*N, 2, G, G)
    up = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=True)
    return up.softmax(dim=1).reshape(B, N, C, size, size)  # (B*N, 2, S, S) -> (B, N, 2, S, S)


def adaclip_loss(
    output: AdaCLIPOutput,
    masks: torch.Tensor,
    labels: torch.Tensor,
    has_mask: torch.Tensor,
    gamma: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The image loss plus, for every output layer, the focal and two Dice map losses.

    Args:
        output: The model's output for ``B`` images.
        masks: Ground truth, ``(B, S, S)`` in {0, 1}.
        labels: Image labels, ``(B,)`` in {0, 1}.
        has_mask: ``(B,)`` bool; the map losses skip images whose mask is unknown.
        gamma: Focal exponent.

    Returns:
        The total loss (a scalar with gradient) and its parts as floats.
    """
    image = focal_loss(output.image_logits.float().softmax(dim=-1), labels.long(), gamma)
    total, named = image, {"image": image}
    if has_mask.any():
        probs = layer_probs(output.layer_logits[has_mask], masks.shape[-1])  # (B', N, 2, S, S)
        truth = masks[has_mask].float()  # (B', S, S)
        focal = sum(focal_loss(probs[:, n], truth.long(), gamma) for n in range(probs.shape[1]))
        dice = sum(
            dice_loss(probs[:, n, 1], truth) + dice_loss(probs[:, n, 0], 1.0 - truth)
            for n in range(probs.shape[1])
        )
        total = total + focal + dice
        named.update({"focal": focal, "dice": dice})
    named["total"] = total
    values = torch.stack([v.detach().float() for v in named.values()]).tolist()  # one sync
    return total, dict(zip(named, values))
