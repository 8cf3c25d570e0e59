"""One inference path for every front end: decode -> AdaCLIP -> smoothed maps at image size."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from adaclip import prompts, render
from adaclip.backbone import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, cast_matmuls, load_backbone
from adaclip.checkpoint_io import check_state
from adaclip.checkpoints import fetch_checkpoint
from adaclip.config import AdaCLIPConfig
from adaclip.errors import AdaCLIPError
from adaclip.images import MAX_PIXELS, ImageInput, describe, load_image, preprocess
from adaclip.model import AdaCLIP, Encoded

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        score: Image-level anomaly score in [0, 1].
        anomaly_map: Smoothed anomaly map at the image's own size, ``(H, W)`` float32 in [0, 1].
        image: The decoded, upright image, ``(H, W, 3)`` uint8 RGB.
        class_name: The class name actually used (after trimming and the default).
        source: Where the image came from (a path, or a description of the object).
        raw_map: The unsmoothed ``S x S`` map, when asked for.
        ok: Always true; lets a batch's results be told from :class:`Failure` ones.
    """

    score: float
    anomaly_map: np.ndarray
    image: np.ndarray
    class_name: str
    source: str
    raw_map: np.ndarray | None = None
    ok: bool = field(default=True, init=False)

    def __repr__(self) -> str:
        H, W = self.anomaly_map.shape
        return (
            f"Prediction(score={self.score:.4f}, class_name={self.class_name!r}, "
            f"source={self.source!r}, size={W}x{H}, raw_map={self.raw_map is not None})"
        )

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The heat map blended over the image, ``(H, W, 3)`` uint8."""
        return render.overlay(self.image, self.anomaly_map, alpha)

    def mask(self, threshold: float) -> np.ndarray:
        """Pixels whose anomaly value reaches ``threshold``, ``(H, W)`` bool."""
        return self.anomaly_map >= threshold


@dataclass(frozen=True)
class Failure:
    """An item of a batch that could not be scored, and why.

    Attributes:
        index: Position of the item in the batch.
        source: Where the image came from.
        error: What went wrong; its message says what to do.
        ok: Always false (see :attr:`Prediction.ok`).
    """

    index: int
    source: str
    error: AdaCLIPError
    ok: bool = field(default=False, init=False)

    @property
    def message(self) -> str:
        """The error message, ready to show."""
        return str(self.error)


class Detector:
    """AdaCLIP ready to score images: built once, then called as often as needed.

    Thread-safe: concurrent calls share the weights and keep no state between calls.
    """

    def __init__(
        self,
        model: AdaCLIP,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        max_pixels: int = MAX_PIXELS,
        checkpoint: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.precision = _check_precision(precision, self.device)
        self.dtype = PRECISIONS[self.precision]
        self.max_pixels = max_pixels
        self.checkpoint = checkpoint
        cast_matmuls(model.clip, self.dtype)
        self.model = model.to(self.device).eval()
        self.overlap_fusion = self.device.type == "cuda"
        """Cluster chunk n on a CPU thread while the GPU encodes chunk n + 1."""
        self.forward_batch = None if self.device.type == "cuda" else 1
        """Images per forward pass within a batch: all on a GPU; one at a time on a CPU, which
        batching does not speed up, so that every image gets bit for bit the numbers it gets
        alone (batched matrix products round differently, and K-means can magnify that)."""

    @property
    def config(self) -> AdaCLIPConfig:
        """The model's settings."""
        return self.model.config

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path = "all",
        backbone: str = DEFAULT_BACKBONE,
        backbone_weights: str | Path | None = None,
        image_size: int = 518,
        device: str = "auto",
        precision: str = "fp32",
        pretrained: str | None = DEFAULT_PRETRAINED,
        **config: object,
    ) -> Detector:
        """Builds a detector from a checkpoint spec and a backbone.

        Args:
            checkpoint: A published name, an ``hf://`` spec or a local path.
            backbone: open_clip model name or local JSON config.
            backbone_weights: A local backbone state dict instead of the Hub download.
            image_size: Input side ``S`` (518 for the published checkpoints).
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
            precision: ``fp32`` (exact), ``bf16`` or ``fp16`` (CUDA only).
            pretrained: open_clip pretrained tag used without ``backbone_weights``.
            **config: Further :class:`AdaCLIPConfig` fields.
        """
        started = time.perf_counter()
        resolved_device = resolve_device(device)
        _check_precision(precision, resolved_device)
        _, state = fetch_checkpoint(checkpoint)  # before the backbone: a bad file fails fast
        clip = load_backbone(backbone, backbone_weights, pretrained, image_size)
        model = AdaCLIP(clip, AdaCLIPConfig(image_size=image_size, **config))
        model.load_learnable(check_state(state, model.learnable_state_dict(), str(checkpoint)))
        detector = cls(model, resolved_device, precision, checkpoint=str(checkpoint))
        logger.info(
            "detector ready (checkpoint %s, %s, %s) in %.1f s",
            checkpoint,
            resolved_device,
            precision,
            time.perf_counter() - started,
        )
        return detector

    def predict(
        self, image: ImageInput, class_name: str | None = None, raw_map: bool = False
    ) -> Prediction:
        """Scores one image.

        Raises:
            AdaCLIPError: The image or class name is unusable; the message says why.
        """
        result = self.predict_batch([image], [class_name], raw_maps=raw_map)[0]
        if isinstance(result, Failure):
            raise result.error
        return result

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        class_names: str | Sequence[str | None] | None = None,
        batch_size: int = 8,
        raw_maps: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Prediction | Failure]:
        """Scores many images, ``batch_size`` at a time; bad items do not stop the rest.

        Args:
            images: Paths, bytes, PIL images or numpy arrays.
            class_names: One name for all, or one per image; ``None`` or empty means
                the generic ``"object"``.
            batch_size: Images per forward pass.
            raw_maps: Also return each unsmoothed ``S x S`` map.
            progress: Called with ``(done, total)`` after each batch.

        Returns:
            One :class:`Prediction` or :class:`Failure` per input, in input order.
        """
        return list(self.iter_predict(images, class_names, batch_size, raw_maps, progress))

    def iter_predict(
        self,
        images: Iterable[ImageInput],
        class_names: str | Sequence[str | None] | None = None,
        batch_size: int = 8,
        raw_maps: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[Prediction | Failure]:
        """Like :meth:`predict_batch`, but yields each result, in input order, once its batch
        is done, and keeps no reference to it: memory stays flat over any number of images.
        """
        if isinstance(images, (str, bytes, os.PathLike, Image.Image, np.ndarray)):
            raise TypeError(
                "predict_batch takes a list of images; use predict() for a single image or "
                "wrap it in a list."
            )
        if batch_size < 1:
            raise AdaCLIPError(f"batch_size must be at least 1; got {batch_size}.")
        images = list(images)
        names = _per_image(class_names, len(images))
        results: list[Prediction | Failure | None] = [None] * len(images)
        total = len(images)
        chunks = [range(s, min(s + batch_size, total)) for s in range(0, total, batch_size)]
        handed = 0  # results[:handed] are yielded and dropped
        with _Background(self.overlap_fusion) as background:
            for chunk, ready in self._decoded(images, names, chunks, results):
                for group in self._groups(ready):
                    encoded = self._encode(group)
                    background.submit(self._complete, group, encoded, raw_maps, results)
                if progress is not None:
                    background.submit(progress, chunk.stop, total)
                while handed < total and results[handed] is not None:
                    images[handed] = None
                    yield _take(results, handed)
                    handed += 1
        for i in range(handed, total):
            yield _take(results, i)

    def _decoded(self, images, names, chunks, results) -> Iterator[tuple[range, list[tuple]]]:
        """Yields each chunk decoded; with overlap on, the next one decodes meanwhile."""
        if not self.overlap_fusion:
            for chunk in chunks:
                yield chunk, self._decode(images, names, chunk, results)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            upcoming = [pool.submit(self._decode, images, names, c, results) for c in chunks[:1]]
            for position, chunk in enumerate(chunks):
                ready = upcoming.pop().result()
                if position + 1 < len(chunks):
                    following = chunks[position + 1]
                    upcoming.append(pool.submit(self._decode, images, names, following, results))
                yield chunk, ready

    def _decode(self, images, names, indices, results) -> list[tuple]:
        """Decodes one chunk; failures go straight into ``results``, the rest are returned."""
        ready = []
        for i in indices:
            source = describe(images[i], i)
            try:
                name = prompts.normalize_class_name(names[i])
                prompts.tokenize_class(name)
                picture = load_image(images[i], self.max_pixels, source)
            except AdaCLIPError as err:
                message = str(err)  # image errors name the file already; say it once
                logger.warning("%s", message if source in message else f"{source}: {message}")
                results[i] = Failure(i, source, err)
                continue
            ready.append((i, source, name, picture, preprocess(picture, self.config.image_size)))
        return ready

    def _groups(self, items: Sequence) -> list[Sequence]:
        """Splits a decoded chunk into forward passes of ``forward_batch`` items."""
        step = self.forward_batch or max(len(items), 1)
        return [items[i : i + step] for i in range(0, len(items), step)]

    @torch.inference_mode()
    def _encode(self, ready: list[tuple]) -> tuple[Encoded, np.ndarray | None]:
        """The device part of a chunk's forward pass, up to the fusion's input points."""
        batch = torch.stack([item[4] for item in ready])  # B x (3, S, S) -> (B, 3, S, S)
        names = [item[2] for item in ready]
        encoded = self.model.encode(batch.to(self.device, torch.float32), names)
        points = self.model.fusion_points(encoded) if self.config.use_hsf else None
        return encoded, points

    @torch.inference_mode()
    def _complete(self, ready, encoded, raw_maps, results) -> None:
        """Fusion clustering, scores, maps and per-image results for an encoded chunk."""
        if not ready:
            return
        encoded, points = encoded
        fused = self.model.cluster(points) if points is not None else None
        out = self.model.finish(encoded, fused)
        scores, maps = out.scores.float().cpu().numpy(), out.maps.float().cpu().numpy()
        for (i, source, name, picture, _), score, raw in zip(ready, scores, maps):
            array = np.asarray(picture)
            results[i] = Prediction(
                score=float(score),
                anomaly_map=self.smooth(raw, array.shape[:2]),
                image=array,
                class_name=name,
                source=source,
                raw_map=raw if raw_maps else None,
            )

    @torch.inference_mode()
    def run(self, batch: torch.Tensor, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Runs the model on preprocessed images.

        Args:
            batch: ``(B, 3, S, S)`` normalised float32 images.
            class_names: One normalised class name per image.

        Returns:
            Scores ``(B,)`` and raw maps ``(B, S, S)``, float32 numpy.
        """
        started = time.perf_counter()
        names, scores, maps = list(class_names), [], []
        for part in self._groups(range(len(batch))):  # as in predict_batch
            out = self.model(batch[part.start : part.stop].to(self.device, torch.float32),
                             names[part.start : part.stop])  # fmt: skip
            scores.append(out.scores.float().cpu().numpy())
            maps.append(out.maps.float().cpu().numpy())
        logger.debug("forward of %d images in %.2f s", len(batch), time.perf_counter() - started)
        return np.concatenate(scores), np.concatenate(maps)

    def smooth(self, raw_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Gaussian-smooths an ``S x S`` map and resizes it to ``size`` ``(H, W)``."""
        smoothed = gaussian_filter(raw_map, sigma=self.config.map_sigma)
        H, W = size
        if smoothed.shape != (H, W):
            smoothed = cv2.resize(smoothed, (W, H), interpolation=cv2.INTER_LINEAR)
        return np.clip(smoothed, 0.0, 1.0).astype(np.float32)


_HANDED = Failure(-1, "", AdaCLIPError("already handed out"))
"""Takes the place of a result that :meth:`Detector.iter_predict` has yielded."""


def _take(results: list, index: int) -> Prediction | Failure:
    """Removes and returns one result, so that a suspended generator holds no reference."""
    result, results[index] = results[index], _HANDED
    return result


def resolve_device(device: str | torch.device) -> torch.device:
    """Turns ``auto`` into CUDA when available, else CPU; checks explicit CUDA requests."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise AdaCLIPError(
            f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N."
        ) from err
    if resolved.type not in ("cpu", "cuda"):
        raise AdaCLIPError(
            f"device {str(device)!r} is not supported; use auto, cpu, cuda or cuda:N."
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AdaCLIPError(
            "device 'cuda' was requested but no CUDA GPU is available; use --device cpu."
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise AdaCLIPError(
            f"device {str(device)!r} does not exist: this machine has "
            f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0."
        )
    return resolved


def _check_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise AdaCLIPError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}.")
    if precision == "fp16" and device.type != "cuda":
        raise AdaCLIPError("fp16 needs a CUDA GPU; on a CPU use --precision bf16 or fp32.")
    return precision


def _per_image(class_names: str | Sequence[str | None] | None, count: int) -> list[str | None]:
    """Expands one class name to all images, or checks there is one per image."""
    if class_names is None or isinstance(class_names, str):
        return [class_names] * count
    names = list(class_names)
    if len(names) == 1:
        return names * count
    if len(names) != count:
        raise AdaCLIPError(
            f"give one class name for all images or one per image; got {len(names)} names "
            f"for {count} images."
        )
    return names


class _Background:
    """Runs jobs in order on one worker thread, at most one pending; inline when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1) if enabled else None
        self.pending: list[Future] = []

    def submit(self, job: Callable, *args: object) -> None:
        """Runs ``job(*args)`` now, or queues it after waiting for all but the last job."""
        if self.pool is None:
            job(*args)
            return
        self.wait(keep=1)
        self.pending.append(self.pool.submit(job, *args))

    def wait(self, keep: int = 0) -> None:
        """Waits until at most ``keep`` jobs are pending, re-raising their errors."""
        while len(self.pending) > keep:
            self.pending.pop(0).result()

    def __enter__(self) -> _Background:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()
