"""AdaCLIP speed and memory benchmark: latency, throughput, peak memory, cold start, accuracy.

Runs each precision in a fresh process (``measure.py``), prints a Markdown table and writes
JSON. Speed does not depend on the weights' values, so by default the backbone and the
learnable parts are random (seeded) and nothing is downloaded::

    python benchmarks/bench.py --json benchmarks/results-cpu.json     # full CPU suite
    python benchmarks/bench.py --device cuda --json results-gpu.json  # the same on a GPU
    python benchmarks/bench.py --quick                                # seconds: tiny model

The accuracy of bf16 and fp16 is their largest difference from fp32 in raw maps and scores
on real images (``--images``; by default a few of the shared real samples).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("ADACLIP_SHARED", REPO.parent / "shared"))
REALDATA = Path(os.environ.get("ADACLIP_REALDATA", SHARED / "realdata"))
GOLDEN = SHARED / "golden"

TARGETS = {
    "fp32": {"end_to_end_s": 14.0, "peak_rss_mb": 2500.0},
    "bf16": {
        "end_to_end_s": 7.0,
        "peak_rss_mb": 1500.0,
        "max_map_diff": 0.02,
        "max_score_diff": 0.01,
    },
}
"""Issue 6's targets for ViT-L-14-336 at 518 px on a 2-core CPU (MB = 10^6 bytes)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Reads the command line; ``--quick`` swaps in the tiny golden model at 240 px."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="ViT-L-14-336", help="open_clip name or JSON config")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--precisions", help="comma-separated; default fp32,bf16 (plus fp16 on CUDA)"
    )
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed batch-1 runs")
    parser.add_argument("--throughput-repeats", type=int, default=1, help="timed runs per batch")
    parser.add_argument(
        "--pipeline-batches",
        type=int,
        help="also time predict_batch over this many chunks per batch size "
        "(default: 3 on CUDA, 0 on CPU)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed batch-1 runs first")
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--images", nargs="+", type=Path, help="real images for the accuracy check")
    parser.add_argument("--class-name", default="object", help="class name for --images")
    parser.add_argument("--accuracy-images", type=int, default=4, help="images compared to fp32")
    parser.add_argument("--checkpoint", help="a real AdaCLIP checkpoint instead of random parts")
    parser.add_argument("--backbone-weights", help="real backbone weights instead of random ones")
    parser.add_argument("--cache-dir", type=Path, help="keep the random weights here for reuse")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny golden model at 240 px")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone = str(GOLDEN / "ViT-T-golden.json")
        args.image_size = 240
        args.checkpoint = str(GOLDEN / "adaclip_checkpoint.pth")
        args.backbone_weights = str(GOLDEN / "clip_weights.pt")
        args.repeats = min(args.repeats, 2)
    if (args.checkpoint is None) != (args.backbone_weights is None):
        parser.error("give both --checkpoint and --backbone-weights, or neither (random weights)")
    args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    return args


def resolve_device(name: str) -> str:
    """``auto`` means CUDA when torch sees a GPU; an explicit ``cuda`` must exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda was given but torch sees no CUDA GPU; use --device cpu.")
    return name


def pipeline_batches(requested: int | None, device: str) -> int:
    """Chunks per ``predict_batch`` timing: worth it where fusion overlaps the device."""
    if requested is not None:
        return requested
    return 3 if device == "cuda" else 0


def machine(device: str, threads: int | None) -> dict:
    """What the numbers were measured on."""
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
        "threads_requested": threads,
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def find_images(args: argparse.Namespace, folder: Path) -> tuple[list[dict], str]:
    """The images to measure on: ``--images``, else one per dataset of the shared real
    samples, else the golden inputs, else synthetic pictures. Returns them and their kind."""
    if args.images:
        return [{"path": str(p), "class_name": args.class_name} for p in args.images], "given"
    manifest = REALDATA / "manifest.json"
    if manifest.is_file():
        chosen = {}
        for entry in json.loads(manifest.read_text()):
            if entry["label"] == 1 and entry["dataset"] not in chosen:
                chosen[entry["dataset"]] = {
                    "path": str(REALDATA / entry["image"]),
                    "class_name": entry["category"].replace("_", " "),
                }
        return list(chosen.values()), "real"
    if (GOLDEN / "golden.json").is_file():
        golden = json.loads((GOLDEN / "golden.json").read_text())
        return [
            {"path": str(GOLDEN / case["image"]), "class_name": case["class_name"]}
            for case in golden["cases"]
        ], "real"
    return synthetic_images(folder, 4), "synthetic"


def synthetic_images(folder: Path, count: int) -> list[dict]:
    """Writes ``count`` seeded 640 x 480 pictures (a gradient, noise and a dark spot)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    items = []
    for i in range(count):
        picture = 0.5 + 0.3 * np.sin(x / (40 + 10 * i))[..., None] * np.array([1.0, 0.8, 0.6])
        picture += rng.normal(0, 0.05, (480, 640, 3))
        spot = (x - 100 - 100 * i) ** 2 + (y - 240) ** 2 < 30**2
        picture[spot] *= 0.3
        path = folder / f"synthetic_{i}.png"
        Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(path)
        items.append({"path": str(path), "class_name": "object"})
    return items


def weights(args: argparse.Namespace, folder: Path) -> dict[str, str]:
    """The files the cold start loads: given ones, or seeded random ones written once."""
    if args.checkpoint:
        return {"checkpoint": args.checkpoint, "backbone_weights": args.backbone_weights}
    command = ["prepare", args.backbone, str(args.image_size), str(args.cache_dir or folder)]
    print(f"writing random {args.backbone} weights to {command[-1]} ...", flush=True)
    output = run_measure(command, args.threads)
    return json.loads(output.strip().splitlines()[-1])


def run_measure(command: list[str], threads: int | None) -> str:
    """Runs ``measure.py`` in a fresh process and returns its stdout; exits if it fails."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    process = subprocess.run(
        [sys.executable, str(HERE / "measure.py"), *command],
        env=env,
        capture_output=True,
        text=True,
    )
    if process.returncode != 0:
        sys.exit(f"measure.py {command[0]} failed:\n{process.stderr}")
    return process.stdout


def measure_precision(spec: dict, folder: Path, threads: int | None) -> dict:
    """Measures one precision in its own process and returns its figures."""
    spec_path = folder / f"spec-{spec['precision']}.json"
    result_path = folder / f"result-{spec['precision']}.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    print(f"measuring {spec['precision']} on {spec['device']} ...", flush=True)
    run_measure(["measure", str(spec_path), str(result_path)], threads)
    return json.loads(result_path.read_text())


def accuracy(result: dict, reference: dict) -> dict[str, float]:
    """Largest and mean absolute differences of raw maps and scores against ``reference``."""
    ours, theirs = np.load(result["outputs"]), np.load(reference["outputs"])
    maps = np.abs(ours["maps"] - theirs["maps"])
    scores = np.abs(ours["scores"] - theirs["scores"])
    return {
        "max_map_diff": round(float(maps.max()), 6),
        "mean_map_diff": round(float(maps.mean()), 6),
        "max_score_diff": round(float(scores.max()), 6),
        "images": len(scores),
    }


def check_targets(args: argparse.Namespace, device: str, results: dict) -> dict | None:
    """Compares the figures with issue 6's targets, when this is the configuration they are for."""
    if (args.backbone, args.image_size, device) != ("ViT-L-14-336", 518, "cpu"):
        return None
    figures = {}
    for precision, result in results.items():
        accuracy_ = result.get("accuracy_vs_fp32") or {}
        figures[precision] = {
            "end_to_end_s": result["latency"]["end_to_end_s"]["median"],
            "peak_rss_mb": result["latency"]["peak_rss_mb"],
            **{k: accuracy_.get(k) for k in ("max_map_diff", "max_score_diff")},
        }
    return {
        precision: {
            name: {
                "target": limit,
                "measured": figures[precision][name],
                "met": _met(figures, precision, name, limit),
            }
            for name, limit in limits.items()
        }
        for precision, limits in TARGETS.items()
        if precision in figures
    }


def _met(figures: dict, precision: str, name: str, limit: float) -> bool | None:
    value = figures[precision].get(name)
    return None if value is None else value <= limit


def table(results: dict, batch_sizes: list[int], device: str) -> str:
    """The results as a Markdown table, one row per precision."""
    gpu = device == "cuda"
    piped = [
        B for B in batch_sizes if all(str(B) in r.get("pipelined", {}) for r in results.values())
    ]
    header = ["precision", "load s", "load + 1st run s", "model s/img", "end-to-end s/img"]
    header += [f"img/s B={B}" for B in batch_sizes]
    header += [f"img/s B={B} predict_batch" for B in piped]
    header += ["peak RSS MB (B=1)", "peak RSS MB (load)"] + (["peak GPU MB (B=1)"] if gpu else [])
    header += ["max map diff", "max score diff"]
    rows = [_row(header), "|" + " --- |" * len(header)]
    rows += [_row(_cells(p, r, batch_sizes, piped, gpu)) for p, r in results.items()]
    return "\n".join(rows)


def _cells(precision: str, r: dict, batch_sizes: list[int], piped: list[int], gpu: bool) -> list:
    """One table row's cells for one precision's results ``r``."""
    lat, acc = r["latency"], r.get("accuracy_vs_fp32") or {}
    first = r["cold_start_s"] + (lat["first_run_s"] or 0.0)
    cells = [precision, f"{r['cold_start_s']:.1f}", f"{first:.1f}"]
    cells += [f"{lat['model_s']['median']:.2f}", f"{lat['end_to_end_s']['median']:.2f}"]
    cells += [f"{r['throughput'][str(B)]['images_per_s']:.3f}" for B in batch_sizes]
    cells += [f"{r['pipelined'][str(B)]['images_per_s']:.3f}" for B in piped]
    cells += [f"{lat['peak_rss_mb']:.0f}", f"{r['cold_start_peaks']['peak_rss_mb']:.0f}"]
    cells += [f"{lat['peak_gpu_mb']:.0f}"] if gpu else []
    return [*cells, _diff(acc, "max_map_diff"), _diff(acc, "max_score_diff")]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _diff(accuracy_: dict, key: str) -> str:
    return f"{accuracy_[key]:.2e}" if key in accuracy_ else "reference"


def main(argv: list[str] | None = None) -> None:
    """Runs the suite: weights, one process per precision, accuracy, table, JSON."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    precisions = (args.precisions or ("fp32,bf16,fp16" if device == "cuda" else "fp32,bf16")).split(
        ","
    )
    with tempfile.TemporaryDirectory(prefix="adaclip-bench-") as tmp:
        folder = Path(tmp)
        images, kind = find_images(args, folder)
        spec = {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "device": device,
            "images": images,
            "batch_sizes": args.batch_sizes,
            "repeats": args.repeats,
            "throughput_repeats": args.throughput_repeats,
            "warmup": args.warmup,
            "pipeline_batches": pipeline_batches(args.pipeline_batches, device),
            "threads": args.threads,
            "accuracy_images": min(args.accuracy_images, len(images)),
            **weights(args, folder),
        }
        results = {
            p: measure_precision({**spec, "precision": p}, folder, args.threads) for p in precisions
        }
        for precision, result in results.items():
            if precision != "fp32" and "fp32" in results:
                result["accuracy_vs_fp32"] = accuracy(result, results["fp32"])
        for result in results.values():
            result.pop("outputs")
    report = {
        "machine": machine(device, args.threads),
        "settings": {
            **{k: v for k, v in spec.items() if k not in ("images", "device")},
            "weights": "given" if args.checkpoint else "random (seeded)",
            "image_kind": kind,
            "images": [item["path"] for item in images],
        },
        "results": results,
        "targets": check_targets(args, device, results),
    }
    print()
    print(
        f"{args.backbone} at {args.image_size} px on {device} ({report['machine']['cpu']}, "
        f"{results[precisions[0]]['torch_threads']} threads)"
    )
    print(table(results, args.batch_sizes, device))
    print_targets(report["targets"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def print_targets(targets: dict | None) -> None:
    """One line per target: the limit, the measured value and whether it is met."""
    if not targets:
        return
    print()
    for precision, checks in targets.items():
        for name, check in checks.items():
            verdict = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
            print(
                f"target {precision} {name} <= {check['target']}: {check['measured']} ({verdict})"
            )


if __name__ == "__main__":
    main()
