"""Pictures of a prediction: heat-map overlay, colour bar, outlined regions (numpy/OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize(anomaly_map: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Maps values to the JET colour scale.

    Args:
        anomaly_map: ``(H, W)`` floats.
        vmin: Value shown as the coldest colour.
        vmax: Value shown as the hottest colour.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    span = max(vmax - vmin, 1e-12)
    scaled = np.clip((anomaly_map - vmin) / span, 0.0, 1.0)
    gray = np.rint(scaled * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends the coloured anomaly map over the image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        anomaly_map: ``(H, W)`` in [0, 1], same size as ``image``.
        alpha: Weight of the heat map, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if not 0.0 <= alpha <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")
    _check_sizes(image, anomaly_map)
    heat = colorize(anomaly_map).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def outline(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    threshold: float,
    color: tuple[int, int, int] = (255, 0, 0),
) -> np.ndarray:
    """Draws the contours of the regions where the map reaches ``threshold``.

    Returns:
        A copy of ``image`` ``(H, W, 3)`` uint8 with the region borders drawn.
    """
    _check_sizes(image, anomaly_map)
    mask = (anomaly_map >= threshold).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    drawn = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(image.shape[:2]) / 300))
    cv2.drawContours(drawn, contours, -1, color, thickness)
    return drawn


def colorbar(height: int = 256, width: int = 24) -> np.ndarray:
    """A vertical JET colour scale, 1 at the top and 0 at the bottom: ``(height, width, 3)``."""
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    return colorize(ramp)


def _check_sizes(image: np.ndarray, anomaly_map: np.ndarray) -> None:
    if image.shape[:2] != anomaly_map.shape:
        raise ValueError(
            f"image is {image.shape[:2]} but the map is {anomaly_map.shape}; they must match."
        )
