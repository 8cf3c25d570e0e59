"""AdaCLIP web demo: drop in an image, optionally name the object, see where it looks defective.

Run ``python app.py --help`` for the options; on a Hugging Face Space the same file runs as
it is (the ``ADACLIP_*`` environment variables replace the flags there). The page is built by
:func:`build_demo`; the handlers are the plain methods of :class:`Demo`, which tests call
without a server. Everything model-related goes through :class:`adaclip.Detector` and
:mod:`adaclip.render`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import functools
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import cv2
import gradio as gr
import numpy as np

from adaclip import checkpoint_io, checkpoints, prompts, render
from adaclip.cli import add_model_options, configure_logging, detector_from_args, positive_int
from adaclip.detector import Detector, Failure, Prediction
from adaclip.errors import AdaCLIPError, CheckpointError, HubError
from adaclip.images import ImageInput
from adaclip.model import AdaCLIP

logger = logging.getLogger("adaclip.app")

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
EXAMPLES = [
    ("brick_crack.png", "brick"),
    ("cup_chip.jpg", "cup"),
    ("gravel_hole.png", "gravel"),
    ("grass_patch.jpg", "grass"),
    ("retina_spots.jpg", "retina"),
]
PUBLISHED = tuple(checkpoints.CHECKPOINTS)
DEFAULT_THRESHOLD = 0.5
THRESHOLD_DECIMALS = 3
"""The threshold slider's step is ``10 ** -THRESHOLD_DECIMALS``; typed values are rounded to it."""
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_BATCH_IMAGES = 32
GALLERY_SIDE = 512
MIN_SHOWN_SIDE = 256  # smaller results are shown enlarged, pixel by pixel
MAX_ENLARGED_SIDE = 2048
KEPT_SIDE = 1024  # a page keeps its result at most this large for threshold changes
KEPT_CSV_FILES = 16
HEATMAP_HEIGHT = 512
SCALE_TOP = 72
"""Blank rows above the colour scale of the heat-map panel, under the page's image buttons."""

DetectOutputs = tuple[np.ndarray, float, str, np.ndarray, np.ndarray, str]


def refuse(message: str, log: bool = True) -> gr.Error:
    """A ``gr.Error`` for something the user can fix, logged as one WARNING line.

    Gradio prints a traceback for every ``gr.Error`` unless told otherwise; a bad upload is
    not a server fault, so the log gets the message alone.

    Args:
        message: What was wrong and what to do, shown to the user.
        log: ``False`` when the cause was logged already.
    """
    if log:
        logger.warning("request refused: %s", " ".join(message.split()))
    return gr.Error(message, print_exception=False)


def handler(fn):
    """Wraps a page or API handler: user errors stay messages, anything else is logged.

    ``gr.Error`` passes through; an :class:`AdaCLIPError` becomes :func:`refuse`'s error with
    the same message; any other exception is logged with its traceback and the user gets a
    short message instead of Gradio's bare "Error".
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except AdaCLIPError as err:
            logged = isinstance(err, UnavailableCheckpointError)
            raise refuse(_strip_temp_paths(str(err)), log=not logged) from err
        except Exception as err:
            logger.exception("%s failed unexpectedly", fn.__name__)
            raise gr.Error(
                "the server failed unexpectedly (the log has the details); try again, and "
                "report it if it keeps happening.",
                print_exception=False,
            ) from err

    return wrapper


class UnavailableCheckpointError(CheckpointError):
    """A checkpoint failed to load just now; the failure is logged already."""


def upload_source(payload: dict | None) -> str | bytes | None:
    """What the ``/detect`` event received for the image, as adaclip input.

    The event runs with ``preprocess=False``: ``gr.Image`` would otherwise open every upload
    with PIL before the handler, bypassing the size and format checks of
    :func:`adaclip.images.load_image` and answering bad files with PIL's own errors. Gradio
    still moves the upload into its cache and checks it came from there.

    Args:
        payload: Gradio's image data, a dict with ``path`` and ``url``.

    Returns:
        The uploaded file's path, the bytes of a base64 ``data:`` URL, or ``None``.
    """
    if payload is None:
        return None
    if payload.get("path"):
        return payload["path"]
    url = payload.get("url") or ""
    if url.startswith("data:"):
        try:
            return base64.b64decode(url.partition(",")[2], validate=True)
        except (binascii.Error, ValueError) as err:
            raise refuse("the pasted image is not valid base64 data; upload a file.") from err
    raise refuse("the image arrived without a file or data; upload it again.")


class Demo:
    """The demo's handlers around one detector per checkpoint.

    The detector given at start-up serves its own checkpoint; the other published
    checkpoints are loaded on first use onto the same frozen backbone and kept.

    Args:
        detector: The detector built at start-up.
        choices: Checkpoint specs the page offers; defaults to the start-up one plus
            the published names.
        batch_size: Images per forward pass in :meth:`detect_many`.
    """

    def __init__(
        self, detector: Detector, choices: Sequence[str] | None = None, batch_size: int = 8
    ) -> None:
        start = detector.checkpoint or "start-up"
        self._specs = _display_names([start, *(choices or PUBLISHED)])  # display name -> spec
        self.choices = list(self._specs)
        self.default_checkpoint = self.choices[0]
        self.batch_size = batch_size
        self._detectors = {self.default_checkpoint: detector}
        self._failures: dict[str, str] = {}  # display name -> why it is off until a restart
        self._lock = threading.Lock()
        self._downloads = tempfile.TemporaryDirectory(prefix="adaclip-app-")

    def detector(self, checkpoint: str | None = None) -> Detector:
        """The detector for ``checkpoint`` (the start-up one when ``None``), built once.

        A checkpoint that failed to load once is not tried again until the app restarts:
        without a cached copy and without network, every attempt would wait out the Hub's
        retries (most of a minute) only to fail the same way.

        Args:
            checkpoint: One of :attr:`choices` (display names, which hide the server's
                folders); the spec behind one is accepted too.

        Raises:
            CheckpointError: The checkpoint is not offered, or cannot be fetched or loaded
                (now or before).
        """
        name = self._display_name(checkpoint)
        if name not in self._detectors:
            with self._lock:
                if name in self._failures:
                    raise CheckpointError(self._failures[name])
                if name not in self._detectors:
                    self._detectors[name] = self._load(name)
        return self._detectors[name]

    def _display_name(self, checkpoint: str | None) -> str:
        """The menu's name for ``checkpoint``: a display name, a spec behind one, or ``None``."""
        if checkpoint is None or checkpoint in self._specs:
            return checkpoint or self.default_checkpoint
        for name, spec in self._specs.items():
            if spec == checkpoint:
                return name
        raise CheckpointError(
            f"checkpoint {checkpoint!r} is not offered here; choose one of "
            f"{', '.join(self.choices)}."
        )

    def _load(self, name: str) -> Detector:
        """Loads checkpoint ``name`` beside the start-up detector; a failure is remembered."""
        spec = self._specs[name]
        try:
            detector = _sibling_detector(self._detectors[self.default_checkpoint], spec)
        except AdaCLIPError as err:
            self._failures[name] = self._unavailable_message(name, err)
            logger.warning(
                "checkpoint %s is off until the app restarts: %s", spec, " ".join(str(err).split())
            )
            raise UnavailableCheckpointError(self._failures[name]) from err
        return detector

    def _unavailable_message(self, name: str, err: AdaCLIPError) -> str:
        """A short note on why checkpoint ``name`` cannot be used and what to do about it."""
        if isinstance(err, HubError):
            reason = "it is not in the local cache and the Hugging Face Hub could not be reached"
        else:
            reason = _first_sentence(self.hide(err))
        if self._specs[name] in PUBLISHED:
            fix = (
                "fetch it where the Hub is reachable (`python -m adaclip download --checkpoint "
                f"{name}`), then restart the app"
            )
        else:
            fix = "fix or replace the file, then restart the app"
        return (
            f"Checkpoint `{name}` could not be loaded: {reason}. To use it, {fix}; "
            "restarting retries it (until then it is not tried again)."
        )

    def hide(self, error: Exception | str) -> str:
        """``error``'s message with checkpoint files and temporary uploads named by file only."""
        message = str(error)
        for name, spec in self._specs.items():
            if spec not in PUBLISHED:
                message = message.replace(spec, name)
        return _strip_temp_paths(message)

    @handler
    def choose_checkpoint(
        self, checkpoint: str | None, in_use: str | None
    ) -> tuple[dict, str, str]:
        """The checkpoint menu's handler: loads the choice now, or falls back and says why.

        Args:
            checkpoint: The spec just chosen.
            in_use: The checkpoint this page used until now (``None``: the start-up one).

        Returns:
            The menu's update (back to ``in_use`` on failure, the failed choice marked), a
            Markdown note that stays on the page, and the checkpoint now in use.
        """
        in_use = in_use or self.default_checkpoint
        try:
            self.detector(checkpoint)
        except CheckpointError as err:
            note = f"⚠️ {self.hide(err)} Still using `{in_use}`."
            return gr.update(value=in_use, choices=self.menu_items()), note, in_use
        name = self._display_name(checkpoint)
        return gr.update(value=name), f"Using checkpoint `{name}`.", name

    def menu_items(self) -> list[tuple[str, str]]:
        """The checkpoint menu's (label, value) pairs; ones that failed say so."""
        return [
            (self._menu_label(name) + (" (unavailable)" if name in self._failures else ""), name)
            for name in self.choices
        ]

    def refresh_menus(self) -> tuple[dict, dict]:
        """Updates for the page's two checkpoint menus: the current labels, values kept."""
        return gr.update(choices=self.menu_items()), gr.update(choices=self.menu_items())

    def _menu_label(self, name: str) -> str:
        """What a published checkpoint was trained on; "(local file)" after a file's name."""
        entry = checkpoints.CHECKPOINTS.get(self._specs[name])
        if entry is not None:
            return f"{name} (trained on {entry.trained_on})"
        return f"{name} (local file)"

    @handler
    def detect(
        self,
        image: ImageInput | None,
        class_name: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        checkpoint: str | None = None,
    ) -> DetectOutputs:
        """Scores one image: the ``/detect`` endpoint.

        Args:
            image: An uploaded file path, bytes, PIL image or array.
            class_name: What the object is; empty means the generic ``object``.
            threshold: Score and map value from which a verdict or a region counts as anomalous.
            checkpoint: One of :attr:`choices`; ``None`` is the start-up checkpoint.

        Returns:
            The heat-map overlay ``(H, W, 3)`` uint8, the score in [0, 1], the verdict as
            Markdown, the heat map with its colour scale, the image with the anomalous
            regions outlined, and the timing as Markdown.

        Raises:
            gr.Error: The image, class name, threshold or checkpoint is unusable; the
                message says why.
        """
        return self._outputs(image, class_name, threshold, checkpoint)[:6]

    @handler
    def detect_for_page(
        self,
        image: dict | None,
        class_name: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        checkpoint: str | None = None,
    ) -> tuple[np.ndarray, float, str, np.ndarray, np.ndarray, str, Prediction]:
        """Scores one image for the page and the ``/detect`` endpoint (see :meth:`detect`).

        Takes Gradio's raw image data (see :func:`upload_source`) and also returns the
        :class:`Prediction` with its image and map shrunk to at most :data:`KEPT_SIDE` px
        (:func:`kept_for_redraw`), which the page keeps in the session so that moving the
        threshold re-draws the verdict and the regions without a model run; API clients do
        not receive it.
        """
        *outputs, prediction = self._outputs(
            upload_source(image), class_name, threshold, checkpoint
        )
        return *outputs, kept_for_redraw(prediction)

    def _outputs(self, image, class_name, threshold, checkpoint):
        """Runs :meth:`_predict` and renders every output, the prediction last."""
        prediction, seconds, detector = self._predict(image, class_name, threshold, checkpoint)
        verdict, outlined = self.apply_threshold(prediction, threshold)
        timing = (
            f"Scored in {seconds:.2f} s on {detector.device}, {detector.precision}, with "
            f"checkpoint `{self._display_name(checkpoint)}` at {detector.config.image_size} px."
        )
        heatmap = heatmap_panel(prediction.anomaly_map, threshold)
        return (
            render.overlay(*enlarge_small(prediction.image, prediction.anomaly_map)),
            prediction.score,
            verdict,
            heatmap,
            outlined,
            timing,
            prediction,
        )

    @handler
    def apply_threshold(
        self, prediction: Prediction | None, threshold: float
    ) -> tuple[str, np.ndarray | None]:
        """The verdict (Markdown) and the outlined image at ``threshold``; no model run."""
        if prediction is None:
            return "", None
        _check_threshold(threshold)
        image, anomaly_map = enlarge_small(prediction.image, prediction.anomaly_map)
        return verdict_markdown(prediction, threshold), render.outline(
            image, anomaly_map, threshold
        )

    @handler
    def redraw(self, prediction: Prediction | None, threshold: float | None) -> tuple:
        """The page's verdict, heat map and outlined regions at a new threshold; no model run.

        The threshold comes from the slider while it is being typed or dragged. It is clamped
        to [0, 1] and rounded to the slider's step (:func:`snap_threshold`), and a value that
        changed that way is written back to the slider, so the box, the slider and the verdict
        always show one and the same number.

        Returns:
            The verdict (Markdown), the heat-map panel, the outlined image and the slider's
            update; ``gr.skip()`` for what has nothing to redraw (an empty box, no prediction).
        """
        if not isinstance(threshold, (int, float)) or threshold != threshold:  # empty or NaN
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        snapped = snap_threshold(threshold)
        slider = gr.update(value=snapped) if snapped != threshold else gr.skip()
        if prediction is None:
            return gr.skip(), gr.skip(), gr.skip(), slider
        verdict, outlined = self.apply_threshold(prediction, snapped)
        return verdict, heatmap_panel(prediction.anomaly_map, snapped), outlined, slider

    @staticmethod
    def clear_results() -> tuple[None, None, str, None, None, str, None]:
        """Empty results (and no kept prediction), shown while a new image is scored."""
        return None, None, "", None, None, "", None

    @handler
    def detect_many(
        self,
        files: Sequence[str] | None,
        class_name: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        checkpoint: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for progress)
    ) -> tuple[list[tuple[np.ndarray, str]], list[list], str]:
        """Scores many images at once: the ``/detect_many`` endpoint.

        Args:
            files: Uploaded file paths, at most :data:`MAX_BATCH_IMAGES`.
            class_name: One class name for all of them; empty means ``object``.
            threshold: Score from which an image counts as anomalous.
            checkpoint: One of :attr:`choices`; ``None`` is the start-up checkpoint.
            progress: Gradio's progress tracker.

        Returns:
            Gallery items (downsized overlay, caption ``#N name: score``), table rows
            ``["#N name", class, score, verdict, error]`` in upload order (N from 1), and the
            path of the same table as CSV.
            Files that fail get their error in the table; the others are still scored.
        """
        return self.detect_many_for_page(files, class_name, threshold, checkpoint, progress)[:3]

    @handler
    def detect_many_for_page(
        self,
        files: Sequence[str] | None,
        class_name: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        checkpoint: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for progress)
    ) -> tuple[list[tuple[np.ndarray, str]], list[list], str, list[list]]:
        """Like :meth:`detect_many`, and also returns the table without verdicts.

        The page keeps that in the session, so that moving the threshold re-draws the
        verdicts and the CSV (:meth:`redraw_many`) without a model run; API clients do not
        receive it.
        """
        _check_batch(files)
        _check_threshold(threshold)
        detector = self.detector(checkpoint)
        sizes = [_file_size(f) for f in files]
        todo = [f for f, size in zip(files, sizes) if size <= MAX_UPLOAD_BYTES]
        progress((0, len(todo)), desc="scoring", unit="images")
        results = detector.iter_predict(
            todo,
            class_name,
            batch_size=self.batch_size,
            progress=lambda done, total: progress((done, total), desc="scoring", unit="images"),
        )
        gallery, scores = [], []
        for number, (path, size) in enumerate(zip(files, sizes), start=1):
            result = next(results) if size <= MAX_UPLOAD_BYTES else None
            scores.append(_score_row(number, Path(path), size, result))
            if isinstance(result, Prediction):  # thumbnail now; the prediction is dropped
                caption = f"{scores[-1][0]}: {result.score:.3f}"
                gallery.append((_downsize(result.overlay(), GALLERY_SIDE), caption))
        rows = _with_verdicts(scores, threshold)
        return gallery, rows, self._write_csv(rows), scores

    @handler
    def redraw_many(self, scores: list[list] | None, threshold: float | None) -> tuple:
        """The many-images table and CSV at a new threshold; no model run.

        Args:
            scores: The rows of the last run without verdicts (see :meth:`detect_many_for_page`).
            threshold: The slider's value, clamped and rounded as in :meth:`redraw`.

        Returns:
            The table rows, the CSV path and the slider's update; ``gr.skip()`` for what has
            nothing to redraw.
        """
        if not isinstance(threshold, (int, float)) or threshold != threshold:  # empty or NaN
            return gr.skip(), gr.skip(), gr.skip()
        snapped = snap_threshold(threshold)
        slider = gr.update(value=snapped) if snapped != threshold else gr.skip()
        if not scores:
            return gr.skip(), gr.skip(), slider
        rows = _with_verdicts(scores, snapped)
        return rows, self._write_csv(rows), slider

    def _predict(
        self, image, class_name, threshold, checkpoint
    ) -> tuple[Prediction, float, Detector]:
        """Checks the request, then runs the detector."""
        if image is None:
            raise refuse(
                "no image yet: drop one on the image box, paste it or take a webcam picture."
            )
        size = len(image) if isinstance(image, (bytes, bytearray)) else _file_size(image)
        if size > MAX_UPLOAD_BYTES:
            raise refuse(_too_large_message("the image", size))
        _check_threshold(threshold)
        detector = self.detector(checkpoint)
        started = time.perf_counter()
        try:
            prediction = detector.predict(image, class_name)
        except AdaCLIPError as err:  # the detector logged it as a WARNING line already
            raise refuse(_strip_temp_paths(str(err)), log=False) from err
        return prediction, time.perf_counter() - started, detector

    def _write_csv(self, rows: list[list]) -> str:
        """Writes the results table to a fresh CSV file and returns its path.

        Only the :data:`KEPT_CSV_FILES` newest files are kept: Gradio copies each into its own
        cache as it answers, so older ones are no longer needed.
        """
        downloads = Path(self._downloads.name)
        path = downloads / uuid.uuid4().hex / "adaclip-scores.csv"
        path.parent.mkdir()
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(TABLE_HEADERS)
            writer.writerows(rows)
        folders = sorted(downloads.iterdir(), key=lambda f: f.stat().st_mtime_ns, reverse=True)
        for old in folders[KEPT_CSV_FILES:]:
            shutil.rmtree(old, ignore_errors=True)  # another request may be removing it too
        return str(path)


TABLE_HEADERS = ["file", "class name", "score", "verdict", "error"]


def _score_row(
    number: int, path: Path, size: int, result: Prediction | Failure | None
) -> list[str | float | None]:
    """``[file, class name, score, error]`` for file ``number`` of many; no verdict yet.

    The file is named ``#number name`` (as in its gallery caption): files of the same name
    from different folders stay apart. ``result`` is ``None`` for a file over the size limit.
    """
    file = f"#{number} {path.name}"
    if result is None:
        return [file, "", None, _too_large_message(path.name, size)]
    if isinstance(result, Failure):
        return [file, "", None, _short_error(result.message, str(path), path.name)]
    return [file, result.class_name, round(result.score, 6), ""]


def _with_verdicts(scores: list[list], threshold: float) -> list[list[str | float | None]]:
    """The many-images table: each score row with its verdict at ``threshold``."""
    rows = []
    for file, class_name, score, error in scores:
        verdict = "" if score is None else "anomalous" if score >= threshold else "normal"
        rows.append([file, class_name, score, verdict, error])
    return rows


def _check_batch(files: Sequence[str] | None) -> None:
    if not files:
        raise refuse("add one or more image files first.")
    if len(files) > MAX_BATCH_IMAGES:
        raise refuse(f"at most {MAX_BATCH_IMAGES} images at once; got {len(files)}. Split them up.")


def _sibling_detector(base: Detector, checkpoint: str) -> Detector:
    """A detector for another checkpoint that shares ``base``'s frozen backbone.

    Only the learnable parts (about 43 MB for the published checkpoints) are loaded; the
    backbone is left as it is, so both detectors can run at the same time.
    """
    started = time.perf_counter()
    _, state = checkpoints.fetch_checkpoint(checkpoint)
    model = AdaCLIP(base.model.clip, base.config)
    model.load_learnable(checkpoint_io.check_state(state, model.learnable_state_dict(), checkpoint))
    detector = Detector(model, base.device, base.precision, base.max_pixels, checkpoint=checkpoint)
    logger.info("checkpoint %s ready in %.1f s", checkpoint, time.perf_counter() - started)
    return detector


def _first_sentence(message: str, limit: int = 200) -> str:
    """The first line of ``message`` up to its first full stop, at most ``limit`` characters."""
    line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    line = line.split(". ")[0].rstrip(".: ")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def heatmap_panel(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """The bare heat map beside a labelled colour scale with the threshold marked.

    Args:
        anomaly_map: ``(H, W)`` values in [0, 1].
        threshold: Value marked on the scale.

    Returns:
        ``(HEATMAP_HEIGHT, W', 3)`` uint8 RGB on a white background.
    """
    H, W = anomaly_map.shape
    width = int(np.clip(round(W * HEATMAP_HEIGHT / H), 1, 4 * HEATMAP_HEIGHT))
    heat = cv2.resize(
        render.colorize(anomaly_map), (width, HEATMAP_HEIGHT), interpolation=cv2.INTER_NEAREST
    )
    margin, bar_width, label_width = 16, 32, 80
    top = SCALE_TOP  # the page's download button sits there, not on "1.00"
    scale = np.full((HEATMAP_HEIGHT, margin + bar_width + label_width, 3), 255, np.uint8)
    scale[top:, margin : margin + bar_width] = render.colorbar(HEATMAP_HEIGHT - top, bar_width)

    def row(value: float) -> int:
        return top + round((1.0 - value) * (HEATMAP_HEIGHT - 1 - top))

    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        text_y = int(np.clip(row(value) + 9, top + 20, HEATMAP_HEIGHT - 4))
        cv2.putText(
            scale, f"{value:.2f}", (margin + bar_width + 4, text_y),
            cv2.FONT_HERSHEY_SIMPLEX, 0.75, (0, 0, 0), 2, cv2.LINE_AA,
        )  # fmt: skip
    y = row(threshold)
    cv2.line(scale, (margin - 6, y), (margin + bar_width + 2, y), (255, 255, 255), 3)
    cv2.line(scale, (margin - 6, y), (margin + bar_width + 2, y), (0, 0, 0), 1)
    return np.concatenate([heat, scale], axis=1)  # (H', W' + scale width, 3)


def verdict_markdown(prediction: Prediction, threshold: float) -> str:
    """The score, the verdict at ``threshold`` and the class name used, as Markdown."""
    if prediction.score >= threshold:
        head, relation = "⚠️ Anomalous", "≥"
    else:
        head, relation = "✅ Normal", "<"
    default = " (the box was empty)" if prediction.class_name == prompts.DEFAULT_CLASS_NAME else ""
    return (
        f"### {head}\n"
        f"Anomaly score **{_score_text(prediction.score, threshold)}** {relation} threshold "
        f"{_threshold_text(threshold)}.  \n"
        f"Class name used: `{prediction.class_name}`{default}."
    )


def snap_threshold(threshold: float) -> float:
    """``threshold`` clamped to [0, 1] and rounded to the slider's step."""
    return round(min(max(float(threshold), 0.0), 1.0), THRESHOLD_DECIMALS)


def _threshold_text(threshold: float) -> str:
    """The threshold as the slider shows it; more digits only if an API call sent them."""
    text = f"{threshold:.{THRESHOLD_DECIMALS}f}"
    return text if float(text) == threshold else f"{threshold:.6g}"


def _score_text(score: float, threshold: float) -> str:
    """The score with 4 decimals, or up to 6 where 4 would seem to contradict the verdict.

    A score of 0.958993 under a threshold of 0.959 shows as 0.958993, not 0.9590.
    """
    for decimals in (4, 5, 6):
        text = f"{score:.{decimals}f}"
        if (float(text) >= threshold) == (score >= threshold):
            return text
    return repr(score)


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise refuse(f"threshold must be between 0 and 1; got {threshold!r}.")


def _file_size(source: ImageInput) -> int:
    """Size in bytes of a file input; 0 for in-memory inputs and missing files."""
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        return os.path.getsize(source)
    return 0


def _too_large_message(name: str, size: int) -> str:
    return (
        f"{name} is {size / 2**20:.1f} MB, more than the upload limit of "
        f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB; downscale or compress it first."
    )


def _strip_temp_paths(message: str) -> str:
    """Replaces Gradio's temporary upload paths in a message with the file's own name."""
    cache = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    words = [Path(w).name if w.startswith(cache) else w for w in message.split(" ")]
    return " ".join(words)


def _short_error(message: str, path: str, name: str) -> str:
    return _strip_temp_paths(message.replace(str(path), name))


def kept_for_redraw(prediction: Prediction) -> Prediction:
    """``prediction`` with its image and map shrunk to at most :data:`KEPT_SIDE` px a side.

    What a page keeps between a run and a threshold change: a 64 MP image would otherwise
    hold about 450 MB per session. The score and the class name stay as they are.
    """
    H, W = prediction.anomaly_map.shape
    factor = KEPT_SIDE / max(H, W)
    if factor >= 1.0:
        return replace(prediction, raw_map=None)
    size = (max(1, round(W * factor)), max(1, round(H * factor)))
    image = cv2.resize(prediction.image, size, interpolation=cv2.INTER_AREA)
    anomaly_map = cv2.resize(prediction.anomaly_map, size, interpolation=cv2.INTER_AREA)
    return replace(prediction, image=image, anomaly_map=anomaly_map, raw_map=None)


def enlarge_small(image: np.ndarray, anomaly_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An image and its map enlarged for the page when their shorter side is under 256 px.

    Each pixel becomes a square block (nearest neighbour), so a 3 x 2 picture shows as
    pixels and not as a thin line; the values are unchanged. The longer side stays at most
    :data:`MAX_ENLARGED_SIDE`.

    Args:
        image: ``(H, W, 3)`` uint8.
        anomaly_map: ``(H, W)`` float32 in [0, 1].

    Returns:
        Both as given when large enough, else ``(f * H, f * W, 3)`` and ``(f * H, f * W)``.
    """
    H, W = anomaly_map.shape
    factor = min(-(-MIN_SHOWN_SIDE // min(H, W)), max(1, MAX_ENLARGED_SIDE // max(H, W)))
    if factor <= 1:
        return image, anomaly_map
    # (H, W, ...) -> (f * H, f * W, ...): each pixel repeated f times down and across
    big_image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    return big_image, anomaly_map.repeat(factor, axis=0).repeat(factor, axis=1)


def _downsize(image: np.ndarray, side: int) -> np.ndarray:
    """Shrinks ``image`` so its longer side is at most ``side`` pixels."""
    H, W = image.shape[:2]
    factor = side / max(H, W)
    if factor >= 1.0:
        return image
    size = (max(1, round(W * factor)), max(1, round(H * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _display_names(specs: Sequence[str]) -> dict[str, str]:
    """Checkpoint specs by the names the page and the API show, which hide server folders.

    Published names stay as they are; files go by their file name, with " (2)", " (3)"...
    after a name that two files share.
    """
    names: dict[str, str] = {}
    for spec in dict.fromkeys(specs):
        name = unique = _label(spec)
        for n in range(2, len(specs) + 2):
            if unique not in names:
                break
            unique = f"{name} ({n})"
        names[unique] = spec
    return names


def _label(checkpoint: str | None) -> str:
    """A short name for a checkpoint spec: published names as they are, files by file name."""
    if checkpoint is None:
        return "start-up"
    return checkpoint if checkpoint in PUBLISHED else Path(checkpoint).name


ABOUT = """
### How it works
AdaCLIP compares the image with sentences that describe a normal and a damaged *class name*
(for example "a photo of a flawless cup" against "a photo of a damaged cup") inside a CLIP
model that learned prompts have adapted to anomaly detection. It needs no normal examples of
your object (zero-shot). The **score** in [0, 1] says how anomalous the whole image looks; the
**heat map** says where. The **threshold** turns the score into a verdict and outlines the map's
regions at or above it. Leaving the class name empty uses the generic word `object`; naming the
object usually helps.

### Licences
- **Code** (this demo and the `adaclip` library): MIT, see `LICENSE`.
- **CLIP backbone weights** (ViT-L-14-336, by OpenAI): MIT.
- **Published AdaCLIP checkpoints** (`all`, `mvtec-colondb`, `visa-clinicdb`, downloaded from
  the Hugging Face Hub on first use): their licence is not stated by the authors and has not
  been verified here. They were trained on benchmark datasets that have terms of their own.
  Consult the authors' repository before any commercial use.
- **Example images**: public-domain or CC0 photographs from scikit-image with a painted-in
  defect (see `examples/README.md`).

### Citation
Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024.
```bibtex
@inproceedings{cao2024adaclip,
  title     = {AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for
               Zero-Shot Anomaly Detection},
  author    = {Cao, Yunkang and Zhang, Jiangning and Frittoli, Luca and Cheng, Yuqi
               and Shen, Weiming and Boracchi, Giacomo},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}
```
"""

CLASS_NAME_INFO = (
    "What the object is, e.g. screw, bottle, brain MRI. Empty: the generic word 'object'."
)

# Narrow screens (phones): let the examples table and the images shrink to the page width
# instead of making the page scroll sideways.
CSS = """
#examples table { table-layout: fixed; width: 100%; }
#examples th, #examples td { white-space: normal; overflow-wrap: anywhere; }
#examples img { max-width: 100%; height: auto; }
.gradio-container { overflow-x: hidden; }
"""

SCROLL_TO_RESULTS = """() => {
    const results = document.querySelector("#overlay");
    const box = results?.getBoundingClientRect();
    if (box && (box.top > 0.6 * window.innerHeight || box.bottom < 0)) {
        results.scrollIntoView({ behavior: "smooth", block: "start" });
    }
}"""
"""Brings the results into view when a run starts or ends and they are off screen (phones)."""

IMAGE_FORMAT = "png"
"""How result images reach the browser: lossless, so thin outlines and colours stay exact."""


def build_demo(demo: Demo) -> gr.Blocks:
    """Lays out the page and wires its events to ``demo``'s handlers."""
    with gr.Blocks(title="AdaCLIP anomaly detection", delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            "# AdaCLIP: zero-shot anomaly detection\n"
            "Drop an image (or paste one, or use the webcam), optionally say what it shows, "
            "and get an anomaly score and a heat map of where it looks defective."
        )
        with gr.Tab("One image"):
            score, one_menu = _single_image_tab(demo)
        with gr.Tab("Many images"):
            many_menu = _many_images_tab(demo)
        with gr.Accordion("About, licences and citation", open=False, elem_id="about"):
            gr.Markdown(ABOUT)
        # Both menus mark the checkpoints that failed, also those that failed on other pages.
        menus = [one_menu[0], many_menu[0]]
        for _, chosen in (one_menu, many_menu):
            chosen.then(demo.refresh_menus, None, menus, api_visibility="private", queue=False)
        blocks.load(demo.refresh_menus, None, menus, api_visibility="private", queue=False)
        # Gradio's number box shows a missing value as 0 when the page loads; a score of 0
        # before any run would be a made-up result, so empty it in the browser.
        blocks.load(None, None, score, js="() => null", api_visibility="private", queue=False)
    return blocks


def _checkpoint_menu(demo: Demo, elem_id: str) -> tuple[gr.Dropdown, gr.events.Dependency]:
    """The checkpoint menu with a note below it; a choice is loaded (or refused) at once.

    Returns:
        The menu and the event of a choice, for the caller to chain the menus' refresh on.
    """
    checkpoint = gr.Dropdown(
        choices=demo.menu_items(),
        value=demo.default_checkpoint,
        label="Checkpoint",
        info="Published AdaCLIP weights; others are downloaded on first use.",
        elem_id=elem_id,
    )
    note = gr.Markdown(elem_id=f"{elem_id}-note")
    in_use = gr.State(demo.default_checkpoint)
    chosen = checkpoint.input(
        demo.choose_checkpoint, [checkpoint, in_use], [checkpoint, note, in_use],
        api_visibility="private", show_progress_on=note,
    )  # fmt: skip
    return checkpoint, chosen


def _threshold_slider(elem_id: str) -> gr.Slider:
    return gr.Slider(
        0.0, 1.0, value=DEFAULT_THRESHOLD, step=10**-THRESHOLD_DECIMALS, label="Anomaly threshold",
        info="Scores and map values at or above it count as anomalous.", elem_id=elem_id,
    )  # fmt: skip


def _single_image_tab(demo: Demo) -> tuple[gr.Number, tuple]:
    """Inputs and examples on the left, the results on the right.

    Returns:
        The score box, and the checkpoint menu with its choice event.
    """
    kept = gr.State(time_to_live=3600)  # the last prediction, for re-thresholding
    with gr.Row():
        with gr.Column(scale=2):
            image, class_name, menu, threshold, run = _single_image_inputs(demo)
            checkpoint = menu[0]
            examples = _examples(image, class_name)
        with gr.Column(scale=3):
            overlay, score, verdict, heatmap, outlined, timing = _single_image_results()
    outputs = [overlay, score, verdict, heatmap, outlined, timing, kept]
    _wire_detection(demo, run.click, "detect", [image, class_name, threshold, checkpoint], outputs)
    if examples is not None:  # a click fills the inputs, then runs like the button
        _wire_detection(
            demo, examples.load_input_event.then, False,
            [image, class_name, threshold, checkpoint], outputs,
        )  # fmt: skip
    image.upload(demo.clear_results, None, outputs, api_visibility="private", queue=False)
    image.clear(demo.clear_results, None, outputs, api_visibility="private", queue=False)
    # change: dragging, typing in the number box (with or without Enter) and the reset button
    # all change the value; release alone misses typing. No preprocessing: the slider's own
    # would refuse a typed 1.5 with an error instead of letting redraw clamp it.
    threshold.change(
        demo.redraw, [kept, threshold], [verdict, heatmap, outlined, threshold],
        api_visibility="private", show_progress="hidden", trigger_mode="always_last",
        preprocess=False,
    )  # fmt: skip
    return score, menu


def _wire_detection(demo: Demo, trigger, api_name: str | Literal[False], inputs, outputs) -> None:
    """Clear the results, score the image, then redraw at the slider's value of that moment.

    Clearing first means the last image's results never sit beside a new one; the redraw
    catches a slider moved during the run. Only the scoring step is an API endpoint.
    """
    kept, threshold = outputs[-1], inputs[2]
    redrawn = [outputs[2], outputs[3], outputs[4], threshold]  # verdict, heat map, outline
    trigger(None, js=SCROLL_TO_RESULTS, api_visibility="private", queue=False)
    trigger(demo.clear_results, None, outputs, api_visibility="private", queue=False).then(
        demo.detect_for_page, inputs, outputs, api_name=api_name, preprocess=False,
        scroll_to_output=True, api_visibility="public" if api_name else "private",
    ).success(
        demo.redraw, [kept, threshold], redrawn, api_visibility="private",
        show_progress="hidden", preprocess=False,
    ).then(None, js=SCROLL_TO_RESULTS, api_visibility="private", queue=False)  # fmt: skip


def _single_image_inputs(demo: Demo) -> tuple[gr.Component, ...]:
    """The image drop, class name, checkpoint, threshold and run button."""
    image = gr.Image(
        label="Image (drop, paste or webcam)", sources=["upload", "clipboard", "webcam"],
        type="filepath", image_mode=None, elem_id="input-image",
    )  # fmt: skip
    class_name = gr.Textbox(
        label="Class name (optional)", info=CLASS_NAME_INFO, placeholder="object",
        max_lines=1, elem_id="class-name",
    )  # fmt: skip
    menu = _checkpoint_menu(demo, "checkpoint")
    threshold = _threshold_slider("threshold")
    run = gr.Button("Detect anomalies", variant="primary", elem_id="run")
    return image, class_name, menu, threshold, run


def _examples(image: gr.Image, class_name: gr.Textbox) -> gr.Examples | None:
    """Clickable examples; the caller chains detection onto a click (no cached results)."""
    examples = [[str(EXAMPLES_DIR / f), c] for f, c in EXAMPLES if (EXAMPLES_DIR / f).is_file()]
    if not examples:
        return None
    return gr.Examples(
        examples, inputs=[image, class_name], label="Examples (click one to run it)",
        cache_examples=False, elem_id="examples",
    )  # fmt: skip


def _single_image_results() -> tuple[gr.Component, ...]:
    """Overlay and heat map above; outlined regions beside score, verdict and timing below."""
    with gr.Row():
        overlay = _result_image("Heat map over the image", "overlay")
        heatmap = _result_image("Heat map and colour scale", "heatmap")
    with gr.Row():
        outlined = _result_image("Regions at the threshold", "outlined")
        with gr.Column():
            score = gr.Number(
                value=None, label="Anomaly score (0 to 1)", elem_id="score", interactive=False
            )
            verdict = gr.Markdown(label="Verdict", elem_id="verdict")
            timing = gr.Markdown(label="Timing", elem_id="timing")
    return overlay, score, verdict, heatmap, outlined, timing


def _result_image(label: str, elem_id: str) -> gr.Image:
    """A result image with a download and a full-screen button (no share: nowhere to share)."""
    return gr.Image(
        label=label, elem_id=elem_id, interactive=False, format=IMAGE_FORMAT,
        buttons=["download", "fullscreen"],
    )  # fmt: skip


def _many_images_tab(demo: Demo) -> tuple[gr.Dropdown, gr.events.Dependency]:
    """A file drop for many images; a gallery, a sortable table and a CSV download back.

    Returns:
        The checkpoint menu with its choice event.
    """
    scores = gr.State(time_to_live=3600)  # the last run's table without verdicts
    with gr.Row():
        with gr.Column(scale=2):
            files = gr.File(
                label=f"Images (up to {MAX_BATCH_IMAGES})", file_count="multiple",
                file_types=["image"], type="filepath", elem_id="batch-files",
            )  # fmt: skip
            class_name = gr.Textbox(
                label="Class name for all (optional)", info=CLASS_NAME_INFO, max_lines=1
            )
            menu = _checkpoint_menu(demo, "batch-checkpoint")
            checkpoint = menu[0]
            threshold = _threshold_slider("batch-threshold")
            run = gr.Button("Score all", variant="primary", elem_id="run-batch")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Heat maps", columns=4, height="auto", format=IMAGE_FORMAT)
            table = gr.Dataframe(
                headers=TABLE_HEADERS, datatype=["str", "str", "number", "str", "str"],
                label="Scores (click a column to sort)", interactive=False, wrap=True,
                elem_id="batch-table",
            )  # fmt: skip
            download = gr.File(label="Scores as CSV")
    run.click(
        demo.detect_many_for_page, [files, class_name, threshold, checkpoint],
        [gallery, table, download, scores], api_name="detect_many", scroll_to_output=True,
    ).success(
        demo.redraw_many, [scores, threshold], [table, download, threshold],
        api_visibility="private", show_progress="hidden", preprocess=False,
    )  # fmt: skip
    threshold.change(
        demo.redraw_many, [scores, threshold], [table, download, threshold],
        api_visibility="private", show_progress="hidden", trigger_mode="always_last",
        preprocess=False,
    )  # fmt: skip
    return menu


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def port_number(text: str) -> int:
    """An argparse type for a TCP port: a whole number from 1 to 65535."""
    try:
        port = positive_int(text)
    except argparse.ArgumentTypeError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535; got {text!r}")
    return port


def _env_value(
    parser: argparse.ArgumentParser, env: dict[str, str], name: str, kind, default: int | None
) -> int | None:
    """Environment variable ``name`` read with argparse type ``kind``; ``default`` when unset.

    A value ``kind`` refuses is a usage error naming the variable, as a bad flag would be.
    """
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except argparse.ArgumentTypeError as err:
        parser.error(f"{name} {err}.")


def _prog() -> str:
    """How the user started the demo, for usage lines: ``app.py`` or the CLI's ``serve``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name == "__main__.py" and Path(sys.argv[0]).parent.name == "adaclip":
        return "python -m adaclip serve"
    if name == "adaclip":
        return "adaclip serve"
    return "app.py"


def build_parser(
    environ: dict[str, str] | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """Command-line options; ``ADACLIP_*`` environment variables set their defaults.

    Args:
        environ: The environment to read; ``os.environ`` when ``None``.
        prog: The program name in usage and error lines; guessed from ``sys.argv`` when
            ``None`` (``app.py``, or ``python -m adaclip serve`` through the CLI).
    """
    env = os.environ if environ is None else environ
    on_space = "SPACE_ID" in env
    parser = argparse.ArgumentParser(
        prog=prog or _prog(), description="Serve the AdaCLIP web demo."
    )
    add_model_options(parser)
    group = parser.add_argument_group("server")
    group.add_argument(
        "--host", help="address to listen on (default: 127.0.0.1; 0.0.0.0 on a Space)"
    )
    group.add_argument(
        "--port", type=port_number, help="port, 1 to 65535 (default: 7860, or the next free one)"
    )
    group.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    group.add_argument(
        "--concurrency", type=positive_int, help="requests run at the same time (default: 2)"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.set_defaults(
        checkpoint=env.get("ADACLIP_CHECKPOINT", "all"),
        backbone=env.get("ADACLIP_BACKBONE", parser.get_default("backbone")),
        backbone_weights=env.get("ADACLIP_BACKBONE_WEIGHTS") or None,
        image_size=_env_value(parser, env, "ADACLIP_IMAGE_SIZE", positive_int, 518),
        device=env.get("ADACLIP_DEVICE", "auto"),
        precision=env.get("ADACLIP_PRECISION", "fp32"),
        host=env.get("ADACLIP_HOST", "0.0.0.0" if on_space else "127.0.0.1"),
        port=_env_value(parser, env, "ADACLIP_PORT", port_number, 7860 if on_space else None),
        share=_env_flag(env.get("ADACLIP_SHARE")),
        concurrency=_env_value(parser, env, "ADACLIP_CONCURRENCY", positive_int, 2),
    )
    return parser


class ServerError(AdaCLIPError):
    """The demo cannot listen where it was asked to."""


def check_port_free(host: str, port: int | None) -> None:
    """Fails early, before the weights load, when ``port`` is taken on ``host``.

    Raises:
        ServerError: Something already listens there; the message names the port.
    """
    if port is None:
        return  # Gradio looks for a free one from 7860 up
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ServerError(
                f"port {port} on {host} is already in use ({err.strerror}); choose another "
                f"with --port (e.g. --port {port + 1 if port < 65535 else 7860}) or stop the "
                "program that holds it."
            ) from err


def serve(args: argparse.Namespace) -> None:
    """Loads the weights once, builds the page and serves it until interrupted.

    Raises:
        AdaCLIPError: The weights cannot be loaded, or the port is taken.
    """
    check_port_free(args.host, args.port)
    detector = detector_from_args(args)
    blocks = build_demo(Demo(detector, batch_size=args.batch_size))
    blocks.queue(default_concurrency_limit=args.concurrency, max_size=64)
    try:
        blocks.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            max_file_size=MAX_UPLOAD_BYTES,
            allowed_paths=[str(EXAMPLES_DIR)],
            footer_links=["api", "gradio"],
            css=CSS,
        )
    except OSError as err:  # the port was taken meanwhile, or the host is not ours
        where = f"{args.host}:{args.port or '7860-7959'}"
        raise ServerError(
            f"cannot listen on {where}: {err}. Choose another --port or --host."
        ) from err


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the options and serves; returns 2 when the model or the port is unusable."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        serve(args)
    except AdaCLIPError as err:
        logger.error("cannot start the demo: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
