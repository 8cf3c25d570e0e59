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
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from adaclip import checkpoints, prompts, render
from adaclip.cli import add_model_options, configure_logging, detector_from_args
from adaclip.detector import Detector, Failure, Prediction
from adaclip.errors import AdaCLIPError, CheckpointError
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
PUBLISHED = tuple(
    getattr(checkpoints, "CHECKPOINTS", None) or ("all", "mvtec-colondb", "visa-clinicdb")
)
DEFAULT_THRESHOLD = 0.5
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_BATCH_IMAGES = 32
GALLERY_SIDE = 512
HEATMAP_HEIGHT = 512

DetectOutputs = tuple[np.ndarray, float, str, np.ndarray, np.ndarray, str]


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
            raise gr.Error("the pasted image is not valid base64 data; upload a file.") from err
    raise gr.Error("the image arrived without a file or data; upload it again.")


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
        self.default_checkpoint = detector.checkpoint or "start-up"
        self.choices = list(dict.fromkeys(choices or [self.default_checkpoint, *PUBLISHED]))
        self.batch_size = batch_size
        self._detectors = {self.default_checkpoint: detector}
        self._lock = threading.Lock()
        self._downloads = tempfile.TemporaryDirectory(prefix="adaclip-app-")

    def detector(self, checkpoint: str | None = None) -> Detector:
        """The detector for ``checkpoint`` (the start-up one when ``None``), built once.

        Raises:
            CheckpointError: The checkpoint is not offered, or cannot be fetched or loaded.
        """
        spec = checkpoint or self.default_checkpoint
        if spec not in self.choices:
            raise CheckpointError(
                f"checkpoint {spec!r} is not offered here; choose one of {self.choices}."
            )
        if spec not in self._detectors:
            with self._lock:
                if spec not in self._detectors:
                    self._detectors[spec] = _sibling_detector(
                        self._detectors[self.default_checkpoint], spec
                    )
        return self._detectors[spec]

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

    def detect_for_page(
        self,
        image: dict | None,
        class_name: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        checkpoint: str | None = None,
    ) -> tuple[np.ndarray, float, str, np.ndarray, np.ndarray, str, Prediction]:
        """Scores one image for the page and the ``/detect`` endpoint (see :meth:`detect`).

        Takes Gradio's raw image data (see :func:`upload_source`) and also returns the
        :class:`Prediction`, which the page keeps in the session so that moving the
        threshold re-draws the verdict and the regions without a model run; API clients do
        not receive it.
        """
        return self._outputs(upload_source(image), class_name, threshold, checkpoint)

    def _outputs(self, image, class_name, threshold, checkpoint):
        """Runs :meth:`_predict` and renders every output, the prediction last."""
        prediction, seconds, detector = self._predict(image, class_name, threshold, checkpoint)
        verdict, outlined = self.apply_threshold(prediction, threshold)
        timing = (
            f"Scored in {seconds:.2f} s on `{detector.device}` with checkpoint "
            f"`{_label(detector.checkpoint)}` at {detector.config.image_size} px."
        )
        heatmap = heatmap_panel(prediction.anomaly_map, threshold)
        return (
            prediction.overlay(),
            prediction.score,
            verdict,
            heatmap,
            outlined,
            timing,
            prediction,
        )

    def apply_threshold(
        self, prediction: Prediction | None, threshold: float
    ) -> tuple[str, np.ndarray | None]:
        """The verdict (Markdown) and the outlined image at ``threshold``; no model run."""
        if prediction is None:
            return "", None
        _check_threshold(threshold)
        return verdict_markdown(prediction, threshold), render.outline(
            prediction.image, prediction.anomaly_map, threshold
        )

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
            Gallery items (downsized overlay, caption), table rows ``[file, class, score,
            verdict, error]`` in upload order, and the path of the same table as CSV.
            Files that fail get their error in the table; the others are still scored.
        """
        _check_batch(files)
        _check_threshold(threshold)
        detector = self._user_errors(self.detector, checkpoint)
        sizes = [_file_size(f) for f in files]
        todo = [f for f, size in zip(files, sizes) if size <= MAX_UPLOAD_BYTES]
        progress((0, len(todo)), desc="scoring", unit="images")
        results = self._user_errors(
            detector.predict_batch,
            todo,
            class_name,
            batch_size=self.batch_size,
            progress=lambda done, total: progress((done, total), desc="scoring", unit="images"),
        )
        scored = iter(results)
        gallery, rows = [], []
        for path, size in zip(files, sizes):
            result = next(scored) if size <= MAX_UPLOAD_BYTES else None
            rows.append(_table_row(Path(path), size, result, threshold))
            if isinstance(result, Prediction):
                caption = f"{Path(path).name}: {result.score:.3f}"
                gallery.append((_downsize(result.overlay(), GALLERY_SIDE), caption))
        return gallery, rows, self._write_csv(rows)

    def _predict(
        self, image, class_name, threshold, checkpoint
    ) -> tuple[Prediction, float, Detector]:
        """Checks the request, then runs the detector; user errors become ``gr.Error``."""
        if image is None:
            raise gr.Error(
                "no image yet: drop one on the image box, paste it or take a webcam picture."
            )
        size = len(image) if isinstance(image, (bytes, bytearray)) else _file_size(image)
        if size > MAX_UPLOAD_BYTES:
            raise gr.Error(_too_large_message("the image", size))
        _check_threshold(threshold)
        detector = self._user_errors(self.detector, checkpoint)
        started = time.perf_counter()
        prediction = self._user_errors(detector.predict, image, class_name)
        return prediction, time.perf_counter() - started, detector

    @staticmethod
    def _user_errors(fn, *args, **kwargs):
        """Calls ``fn``; an :class:`AdaCLIPError` becomes a ``gr.Error`` with the same message."""
        try:
            return fn(*args, **kwargs)
        except AdaCLIPError as err:
            logger.info("request refused: %s", err)
            raise gr.Error(_strip_temp_paths(str(err))) from err

    def _write_csv(self, rows: list[list]) -> str:
        """Writes the results table to a fresh CSV file and returns its path."""
        path = Path(self._downloads.name) / uuid.uuid4().hex / "adaclip-scores.csv"
        path.parent.mkdir()
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(TABLE_HEADERS)
            writer.writerows(rows)
        return str(path)


TABLE_HEADERS = ["file", "class name", "score", "verdict", "error"]


def _table_row(
    path: Path, size: int, result: Prediction | Failure | None, threshold: float
) -> list[str | float | None]:
    """One row of the many-images table; ``result`` is ``None`` for a file over the size limit."""
    if result is None:
        return [path.name, "", None, "", _too_large_message(path.name, size)]
    if isinstance(result, Failure):
        return [path.name, "", None, "", _short_error(result.message, str(path), path.name)]
    verdict = "anomalous" if result.score >= threshold else "normal"
    return [path.name, result.class_name, round(result.score, 6), verdict, ""]


def _check_batch(files: Sequence[str] | None) -> None:
    if not files:
        raise gr.Error("add one or more image files first.")
    if len(files) > MAX_BATCH_IMAGES:
        raise gr.Error(
            f"at most {MAX_BATCH_IMAGES} images at once; got {len(files)}. Split them up."
        )


def _sibling_detector(base: Detector, checkpoint: str) -> Detector:
    """A detector for another checkpoint that shares ``base``'s frozen backbone.

    Only the learnable parts (about 43 MB for the published checkpoints) are loaded; the
    backbone is never modified, so both detectors can run at the same time.
    """
    started = time.perf_counter()
    state = checkpoints.read_state(checkpoints.resolve_checkpoint(checkpoint))
    model = AdaCLIP(base.model.clip, base.config)
    model.load_learnable(checkpoints.check_state(state, model.learnable_state_dict(), checkpoint))
    detector = Detector(model, base.device, base.precision, base.max_pixels, checkpoint=checkpoint)
    logger.info("checkpoint %s ready in %.1f s", checkpoint, time.perf_counter() - started)
    return detector


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
    scale = np.full((HEATMAP_HEIGHT, margin + bar_width + label_width, 3), 255, np.uint8)
    scale[:, margin : margin + bar_width] = render.colorbar(HEATMAP_HEIGHT, bar_width)
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = round((1.0 - value) * (HEATMAP_HEIGHT - 1))
        text_y = int(np.clip(y + 9, 20, HEATMAP_HEIGHT - 4))
        cv2.putText(
            scale, f"{value:.2f}", (margin + bar_width + 4, text_y),
            cv2.FONT_HERSHEY_SIMPLEX, 0.75, (0, 0, 0), 2, cv2.LINE_AA,
        )  # fmt: skip
    y = round((1.0 - threshold) * (HEATMAP_HEIGHT - 1))
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
        f"Anomaly score **{prediction.score:.4f}** {relation} threshold {threshold:.2f}.  \n"
        f"Class name used: `{prediction.class_name}`{default}."
    )


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise gr.Error(f"threshold must be between 0 and 1; got {threshold!r}.")


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


def _downsize(image: np.ndarray, side: int) -> np.ndarray:
    """Shrinks ``image`` so its longer side is at most ``side`` pixels."""
    H, W = image.shape[:2]
    factor = side / max(H, W)
    if factor >= 1.0:
        return image
    size = (max(1, round(W * factor)), max(1, round(H * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _choice_label(checkpoint: str) -> str:
    """How the checkpoint menu shows a spec: what a published one was trained on, else the file."""
    entry = getattr(checkpoints, "CHECKPOINTS", {}).get(checkpoint)
    trained_on = getattr(entry, "trained_on", None)
    if checkpoint in PUBLISHED:
        return f"{checkpoint} (trained on {trained_on})" if trained_on else checkpoint
    return f"{_label(checkpoint)} (local file)"


def _label(checkpoint: str | None) -> str:
    """A short name for a checkpoint spec: published names as they are, files by file name."""
    if checkpoint is None:
        return "start-up"
    return checkpoint if checkpoint in PUBLISHED else Path(checkpoint).name


# TODO(#4): the licence notes below were written without access to the upstream pages;
# check them against the authors' repository and the datasets' sites.
ABOUT = """
### How it works
AdaCLIP compares the image with sentences that describe a normal and a damaged *class name*
(for example "a photo of a flawless cup" against "a photo of a damaged cup") inside a CLIP
model that learned prompts have adapted to anomaly detection. It needs no normal examples of
your object (zero-shot). The **score** in [0, 1] says how anomalous the whole image looks; the
**heat map** says where. The **threshold** turns the score into a verdict and outlines the map's
regions at or above it. Leaving the class name empty uses the generic word `object`; naming the
object usually helps.

### Checkpoints and licences
- `all` (trained on all 14 datasets), `mvtec-colondb` (MVTec AD + ColonDB, for evaluating on
  VisA) and `visa-clinicdb` (VisA + ClinicDB, for evaluating on MVTec AD) are the authors'
  published weights, downloaded from the Hugging Face Hub on first use. They come from the
  AdaCLIP authors' repository (MIT licence) but were trained on benchmark datasets with their
  own terms (MVTec AD: CC BY-NC-SA 4.0, VisA: CC BY 4.0 among others): check those before any
  commercial use.
- The CLIP backbone (ViT-L-14-336) is OpenAI's, under the MIT licence.
- This demo and the `adaclip` library are MIT-licensed. The example images are public domain
  or CC0 photographs from scikit-image with a painted-in defect (see `examples/README.md`).

### Citation
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


def build_demo(demo: Demo) -> gr.Blocks:
    """Lays out the page and wires its events to ``demo``'s handlers."""
    with gr.Blocks(title="AdaCLIP anomaly detection", delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            "# AdaCLIP: zero-shot anomaly detection\n"
            "Drop an image (or paste one, or use the webcam), optionally say what it shows, "
            "and get an anomaly score and a heat map of where it looks defective."
        )
        with gr.Tab("One image"):
            _single_image_tab(demo)
        with gr.Tab("Many images"):
            _many_images_tab(demo)
        with gr.Accordion("About, licences and citation", open=False):
            gr.Markdown(ABOUT)
    return blocks


def _checkpoint_dropdown(demo: Demo) -> gr.Dropdown:
    return gr.Dropdown(
        choices=[(_choice_label(c), c) for c in demo.choices],
        value=demo.default_checkpoint,
        label="Checkpoint",
        info="Published AdaCLIP weights; others are downloaded on first use.",
    )


def _threshold_slider() -> gr.Slider:
    return gr.Slider(
        0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Anomaly threshold",
        info="Scores and map values at or above it count as anomalous.",
    )  # fmt: skip


def _single_image_tab(demo: Demo) -> None:
    """Inputs on the left, the four results in a grid on the right."""
    kept = gr.State(time_to_live=3600)  # the last prediction, for re-thresholding
    with gr.Row():
        with gr.Column(scale=2):
            image, class_name, checkpoint, threshold, run = _single_image_inputs(demo)
        with gr.Column(scale=3):
            overlay, score, verdict, heatmap, outlined, timing = _single_image_results()
    outputs = [overlay, score, verdict, heatmap, outlined, timing, kept]
    run.click(
        demo.detect_for_page, [image, class_name, threshold, checkpoint], outputs,
        api_name="detect", preprocess=False,
    )  # fmt: skip
    threshold.release(
        demo.apply_threshold, [kept, threshold], [verdict, outlined], api_visibility="private"
    )


def _single_image_inputs(demo: Demo) -> tuple[gr.Component, ...]:
    """The image drop, class name, checkpoint, threshold, run button and examples."""
    image = gr.Image(
        label="Image (drop, paste or webcam)", sources=["upload", "clipboard", "webcam"],
        type="filepath", image_mode=None, elem_id="input-image",
    )  # fmt: skip
    class_name = gr.Textbox(
        label="Class name (optional)", info=CLASS_NAME_INFO, placeholder="object",
        max_lines=1, elem_id="class-name",
    )  # fmt: skip
    checkpoint = _checkpoint_dropdown(demo)
    threshold = _threshold_slider()
    run = gr.Button("Detect anomalies", variant="primary", elem_id="run")
    examples = [[str(EXAMPLES_DIR / f), c] for f, c in EXAMPLES if (EXAMPLES_DIR / f).is_file()]
    if examples:
        gr.Examples(examples, inputs=[image, class_name], label="Examples (click one)")
    return image, class_name, checkpoint, threshold, run


def _single_image_results() -> tuple[gr.Component, ...]:
    """Overlay and heat map above; outlined regions beside score, verdict and timing below."""
    with gr.Row():
        overlay = gr.Image(label="Heat map over the image", elem_id="overlay", interactive=False)
        heatmap = gr.Image(label="Heat map and colour scale", elem_id="heatmap", interactive=False)
    with gr.Row():
        outlined = gr.Image(label="Regions at the threshold", elem_id="outlined", interactive=False)
        with gr.Column():
            score = gr.Number(
                value=None, label="Anomaly score (0 to 1)", elem_id="score", interactive=False
            )
            verdict = gr.Markdown(label="Verdict", elem_id="verdict")
            timing = gr.Markdown(label="Timing", elem_id="timing")
    return overlay, score, verdict, heatmap, outlined, timing


def _many_images_tab(demo: Demo) -> None:
    """A file drop for many images; a gallery, a sortable table and a CSV download back."""
    with gr.Row():
        with gr.Column(scale=2):
            files = gr.File(
                label=f"Images (up to {MAX_BATCH_IMAGES})", file_count="multiple",
                file_types=["image"], type="filepath", elem_id="batch-files",
            )  # fmt: skip
            class_name = gr.Textbox(
                label="Class name for all (optional)", info=CLASS_NAME_INFO, max_lines=1
            )
            checkpoint = _checkpoint_dropdown(demo)
            threshold = _threshold_slider()
            run = gr.Button("Score all", variant="primary", elem_id="run-batch")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Heat maps", columns=4, height="auto")
            table = gr.Dataframe(
                headers=TABLE_HEADERS, datatype=["str", "str", "number", "str", "str"],
                label="Scores (click a column to sort)", interactive=False, wrap=True,
                elem_id="batch-table",
            )  # fmt: skip
            download = gr.File(label="Scores as CSV")
    run.click(
        demo.detect_many, [files, class_name, threshold, checkpoint], [gallery, table, download],
        api_name="detect_many",
    )  # fmt: skip


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(
    parser: argparse.ArgumentParser, env: dict[str, str], name: str, default: int | None
) -> int | None:
    """An integer environment variable, ``default`` when unset; a usage error when not a number."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        parser.error(f"{name} must be a whole number; got {value!r}.")


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """Command-line options; ``ADACLIP_*`` environment variables set their defaults."""
    env = os.environ if environ is None else environ
    on_space = "SPACE_ID" in env
    parser = argparse.ArgumentParser(prog="app.py", description="Serve the AdaCLIP web demo.")
    add_model_options(parser)
    group = parser.add_argument_group("server")
    group.add_argument(
        "--host", help="address to listen on (default: 127.0.0.1; 0.0.0.0 on a Space)"
    )
    group.add_argument("--port", type=int, help="port (default: 7860, or the next free one)")
    group.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    group.add_argument("--concurrency", type=int, help="requests run at the same time (default: 2)")
    group.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.set_defaults(
        checkpoint=env.get("ADACLIP_CHECKPOINT", "all"),
        backbone=env.get("ADACLIP_BACKBONE", parser.get_default("backbone")),
        backbone_weights=env.get("ADACLIP_BACKBONE_WEIGHTS") or None,
        image_size=_env_int(parser, env, "ADACLIP_IMAGE_SIZE", 518),
        device=env.get("ADACLIP_DEVICE", "auto"),
        precision=env.get("ADACLIP_PRECISION", "fp32"),
        host=env.get("ADACLIP_HOST", "0.0.0.0" if on_space else "127.0.0.1"),
        port=_env_int(parser, env, "ADACLIP_PORT", 7860 if on_space else None),
        share=_env_flag(env.get("ADACLIP_SHARE")),
        concurrency=_env_int(parser, env, "ADACLIP_CONCURRENCY", 2),
    )
    return parser


def serve(args: argparse.Namespace) -> None:
    """Loads the weights once, builds the page and serves it until interrupted."""
    detector = detector_from_args(args)
    blocks = build_demo(Demo(detector, batch_size=args.batch_size))
    blocks.queue(default_concurrency_limit=args.concurrency, max_size=64)
    blocks.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=MAX_UPLOAD_BYTES,
        allowed_paths=[str(EXAMPLES_DIR)],
        footer_links=["api", "gradio"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the options and serves; returns 2 when the model cannot be loaded."""
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
