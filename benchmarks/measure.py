"""Measurements that need their own process: random weights, and one precision's figures.

``bench.py`` runs this script; it can also be run by hand::

    python benchmarks/measure.py prepare ViT-L-14-336 518 /tmp/weights
    python benchmarks/measure.py measure spec.json result.json

``measure`` handles one precision per process, so that the peak memory of one precision
never shows up in another's figures. Peak resident memory is read from the kernel's
high-water mark (``VmHWM``), which is reset before each measured phase; where the kernel
offers no reset, the figure covers the whole process and the result says so.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from adaclip.backbone import backbone_config, load_backbone, resize_grid
from adaclip.checkpoint_io import save_checkpoint
from adaclip.config import AdaCLIPConfig
from adaclip.detector import Detector
from adaclip.images import load_image, preprocess
from adaclip.model import AdaCLIP

MB = 1_000_000
"""Memory figures are in MB of 10^6 bytes."""


def prepare(backbone: str, image_size: int, folder: Path) -> dict[str, str]:
    """Writes random backbone weights and a random reference-format checkpoint, seeded.

    The backbone is saved at its own input size and as safetensors (as the Hub serves the
    published weights, and as they are loaded first); the learnable parts are built for
    ``image_size``. Files already there are kept.

    Returns:
        ``{"backbone_weights": path, "checkpoint": path}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{backbone}-random.safetensors"
    checkpoint = folder / f"{backbone}-{image_size}-adaclip-random.pth"
    if not (weights.is_file() and checkpoint.is_file()):
        torch.manual_seed(0)
        native = backbone_config(backbone).image_size
        clip = load_backbone(backbone, pretrained=None, image_size=native)
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, weights)
        resize_grid(clip, image_size)
        model = AdaCLIP(clip, AdaCLIPConfig(image_size=image_size))
        save_checkpoint(model.learnable_state_dict(), checkpoint)
    return {"backbone_weights": str(weights), "checkpoint": str(checkpoint)}


def reset_peaks(device: torch.device) -> bool:
    """Resets the peak-memory counters; returns whether the RSS peak could be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def status_mb(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB, if there is one."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) * 1024 / MB, 1)  # the kernel counts KiB
    return None


def resident_parts(weights: str | None = None) -> dict[str, float | None]:
    """Resident memory now, in MB: anonymous, file-backed and, given the backbone file, the
    part of the file-backed memory that is that file's pages (the weights still mapped)."""
    parts = {"anon": status_mb("RssAnon"), "file": status_mb("RssFile")}
    if weights is not None:
        parts["weights_file"] = mapped_file_mb(weights)
    return parts


def mapped_file_mb(path: str) -> float | None:
    """Resident MB of this process's mappings of ``path`` (``None`` without ``smaps``)."""
    smaps = Path("/proc/self/smaps")
    if not smaps.is_file():
        return None
    target, inside, kib = str(Path(path).resolve()), False, 0
    for line in smaps.read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5] == target  # a mapping's first line
        elif inside and head[0] == "Rss:":
            kib += int(head[1])
    return round(kib * 1024 / MB, 1)


def max_rss_mb() -> float:
    """Peak resident memory of the whole process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, else KiB
    return round(peak / MB if sys.platform == "darwin" else peak * 1024 / MB, 1)


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset where the kernel allows one, in MB."""
    return status_mb("VmHWM") or max_rss_mb()


def peaks(device: torch.device) -> dict[str, float]:
    """Peak host RSS, plus peak GPU memory allocated by torch on CUDA, in MB."""
    result = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / MB, 1)
    return result


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work, so that a timer reads finished work only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, step: Callable[[], object], repeats: int) -> list[float]:
    """Runs ``step()`` ``repeats`` times and returns each run's wall time in seconds."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, float | list[float]]:
    """Median, minimum and every run of a list of timings, rounded to milliseconds."""
    return {
        "median": round(statistics.median(times), 3),
        "min": round(min(times), 3),
        "runs": [round(t, 3) for t in times],
    }


def cold_start(spec: dict) -> tuple[Detector, float]:
    """Builds the detector from the cached files; returns it and the seconds it took."""
    device = torch.device(spec["device"])
    synchronize(device)
    started = time.perf_counter()
    detector = Detector.from_pretrained(
        checkpoint=spec["checkpoint"],
        backbone=spec["backbone"],
        backbone_weights=spec["backbone_weights"],
        image_size=spec["image_size"],
        device=spec["device"],
        precision=spec["precision"],
        pretrained=None,
    )
    synchronize(device)
    return detector, time.perf_counter() - started


def inputs(detector: Detector, images: list[dict], count: int) -> tuple[torch.Tensor, list[str]]:
    """Preprocesses ``count`` images, cycling through the list: ``(count, 3, S, S)`` and names."""
    S = detector.config.image_size
    chosen = [images[i % len(images)] for i in range(count)]
    batch = torch.stack([preprocess(load_image(item["path"]), S) for item in chosen])
    return batch, [item["class_name"] for item in chosen]


def latency(detector: Detector, spec: dict) -> dict:
    """Batch-1 latency, model only and end to end, and the peak memory while measuring."""
    device = detector.device
    first = spec["images"][0]
    batch, names = inputs(detector, spec["images"], 1)
    reset_peaks(device)
    warmup = timed(device, lambda: detector.run(batch, names), spec["warmup"])
    model = timed(device, lambda: detector.run(batch, names), spec["repeats"])
    end_to_end = timed(
        device, lambda: detector.predict(first["path"], first["class_name"]), spec["repeats"]
    )
    return {
        "first_run_s": round(warmup[0], 3) if warmup else None,
        "model_s": summary(model),
        "end_to_end_s": summary(end_to_end),
        "end_to_end_image": first["path"],
        **peaks(device),
        "rss_now_mb": {kind: status_mb(f"Rss{kind.title()}") for kind in ("anon", "file")},
    }


def throughput(detector: Detector, spec: dict, batch_size: int) -> dict:
    """Images per second of the model on batches of ``batch_size``, and the peak memory."""
    device = detector.device
    batch, names = inputs(detector, spec["images"], batch_size)
    if device.type == "cuda":  # a new shape picks its kernels on first use; cheap on a GPU
        detector.run(batch, names)
    reset_peaks(device)
    times = timed(device, lambda: detector.run(batch, names), spec["throughput_repeats"])
    return {
        "images_per_s": round(batch_size / statistics.median(times), 4),
        "seconds_per_batch": summary(times),
        **peaks(device),
    }


def pipelined(detector: Detector, spec: dict, batch_size: int) -> dict:
    """Images per second of ``predict_batch`` over several chunks of decoded images.

    This is the whole path (preprocessing, model, fusion, smoothing) as a batch job sees
    it, where the detector may cluster one chunk while the device encodes the next.
    """
    count = batch_size * spec["pipeline_batches"]
    chosen = [spec["images"][i % len(spec["images"])] for i in range(count)]
    pictures = [load_image(item["path"]) for item in chosen]
    names = [item["class_name"] for item in chosen]
    device = detector.device
    detector.predict_batch(pictures[:batch_size], names[:batch_size], batch_size=batch_size)
    reset_peaks(device)
    times = timed(device, lambda: detector.predict_batch(pictures, names, batch_size), 1)
    return {"images_per_s": round(count / times[0], 4), "images": count, **peaks(device)}


def accuracy_outputs(detector: Detector, spec: dict, folder: Path) -> str:
    """Scores the accuracy images one batch at a time and saves scores and raw maps (npz)."""
    items = spec["images"][: spec["accuracy_images"]]
    batch, names = inputs(detector, items, len(items))
    scores, maps = detector.run(batch, names)
    path = folder / f"outputs-{spec['precision']}.npz"
    np.savez_compressed(path, scores=scores, maps=maps)
    return str(path)


def measure(spec: dict, result_path: Path) -> None:
    """Measures one precision as ``spec`` says and writes the figures as JSON."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    baseline = status_mb("VmRSS")
    before = resident_parts()
    resettable = reset_peaks(device)
    detector, seconds = cold_start(spec)
    loaded = resident_parts()
    result = {
        "precision": spec["precision"],
        "device": str(detector.device),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "peak_reset_supported": resettable,
        "rss_before_load_mb": baseline,
        "resident_before_load_mb": before,
        "cold_start_s": round(seconds, 3),
        "cold_start_peaks": peaks(device),
        "resident_after_load_mb": loaded,
        "latency": latency(detector, spec),
        "resident_after_scoring_mb": resident_parts(spec["backbone_weights"]),
        "throughput": {str(B): throughput(detector, spec, B) for B in spec["batch_sizes"] if B > 1},
    }
    if spec["pipeline_batches"]:
        result["pipelined"] = {str(B): pipelined(detector, spec, B) for B in spec["batch_sizes"]}
    result["throughput"]["1"] = {
        "images_per_s": round(1 / result["latency"]["model_s"]["median"], 4),
        "from": "batch-1 model latency",
    }
    result["outputs"] = accuracy_outputs(detector, spec, result_path.parent)
    result["process_peak_rss_mb"] = max_rss_mb()
    result_path.write_text(json.dumps(result, indent=2))


def main(argv: list[str]) -> None:
    """``prepare BACKBONE SIZE FOLDER`` or ``measure SPEC_JSON RESULT_JSON``."""
    if len(argv) == 4 and argv[0] == "prepare":
        print(json.dumps(prepare(argv[1], int(argv[2]), Path(argv[3]))))
    elif len(argv) == 3 and argv[0] == "measure":
        measure(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
