"""The ``adaclip`` command line: predict, download, checkpoints, evaluate, train, serve."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from adaclip import __version__, prompts
from adaclip.backbone import DEFAULT_BACKBONE, DEFAULT_PRETRAINED
from adaclip.detector import PRECISIONS, Detector
from adaclip.errors import AdaCLIPError
from adaclip.images import IMAGE_SUFFIXES, list_images
from adaclip.results import ResultFolder

logger = logging.getLogger("adaclip.cli")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes: a whole number of at least 1."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type for a whole number of at least 0 (0 meaning none, as for --workers)."""
    return _whole_number(text, 0)


def probability(text: str) -> float:
    """An argparse type for a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose and place the model, shared by every command that runs it."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        default="all",
        help="published name (all, mvtec-colondb, visa-clinicdb), hf://OWNER/REPO/PATH or a "
        "local .pth/.safetensors file (default: all)",
    )
    add_backbone_options(group)
    group.add_argument(
        "--precision", choices=sorted(PRECISIONS), default="fp32", help="default: fp32 (exact)"
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per forward pass (default: 8)"
    )


def add_backbone_options(group: argparse._ActionsContainer) -> None:
    """Backbone, input size and device: what every command that builds a model needs."""
    group.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"open_clip model name or local JSON config (default: {DEFAULT_BACKBONE})",
    )
    group.add_argument("--backbone-weights", help="local backbone state dict instead of the Hub")
    group.add_argument(
        "--image-size", type=positive_int, default=518, help="input side S (default: 518)"
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def detector_from_args(args: argparse.Namespace) -> Detector:
    """Builds the detector the model options describe."""
    return Detector.from_pretrained(
        checkpoint=args.checkpoint,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        image_size=args.image_size,
        device=args.device,
        precision=args.precision,
    )


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="score images and write maps, overlays and results.json",
        description="Score images or folders of images; exits 1 if any image failed.",
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument(
        "--class-name",
        action="append",
        dest="class_names",
        help="what the object is; once for all images or once per image (default: object)",
    )
    parser.add_argument("--raw-maps", action="store_true", help="save raw S x S maps, not smoothed")
    parser.add_argument(
        "--output",
        default="adaclip-output",
        help="output folder; maps and overlays of an earlier run there are replaced "
        "(default: adaclip-output)",
    )
    add_model_options(parser)
    parser.set_defaults(handler=run_predict)


def expand_inputs(inputs: Sequence[str], skip: Path | None = None) -> list[Path]:
    """Files as given, folders expanded to their images; a missing path is kept so it fails.

    Images found inside ``skip`` (the output folder) are left out, so that a run in a folder
    that holds an earlier run's overlays does not score them.
    """
    skipped = skip.resolve() if skip is not None else None
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            paths.append(path)
            continue
        found = list_images(path)
        if skipped is not None:
            kept = [p for p in found if not p.resolve().is_relative_to(skipped)]
            if len(kept) < len(found):
                logger.info("left out %d image(s) inside the output folder", len(found) - len(kept))
            found = kept
        if not found:
            logger.warning("folder %s holds no images (%s)", path, ", ".join(IMAGE_SUFFIXES))
        paths.extend(found)
    return paths


def run_predict(args: argparse.Namespace) -> int:
    """Scores the inputs and writes ``results.json``, maps and overlays under ``--output``."""
    output = Path(args.output)
    paths = expand_inputs(args.inputs, skip=output)
    if not paths:
        raise AdaCLIPError("no images to score: the given folders hold no image files.")
    names = args.class_names or [None]
    if len(names) not in (1, len(paths)):
        raise AdaCLIPError(
            f"give --class-name once for all images or once per image; got {len(names)} "
            f"for {len(paths)} images."
        )
    per_image = [prompts.normalize_class_name(n) for n in names]
    for name in dict.fromkeys(per_image):
        prompts.tokenize_class(name)  # a bad name is a usage error: refuse before loading weights
    if len(per_image) == 1:
        per_image *= len(paths)
    settings = {
        "checkpoint": args.checkpoint,
        "backbone": args.backbone,
        "backbone_weights": args.backbone_weights,
        "image_size": args.image_size,
        "precision": args.precision,
    }
    folder = ResultFolder(output, args.raw_maps, settings)
    folder.check()
    detector = detector_from_args(args)
    folder.settings["device"] = str(detector.device)
    folder.clear_previous()
    scored = detector.iter_predict(
        [str(p) for p in paths], per_image, args.batch_size, args.raw_maps
    )
    try:
        with _progress(len(paths)) as bar:
            for i, (path, name, result) in enumerate(zip(paths, per_image, scored)):
                folder.add(i, path, name, result)
                if (i + 1) % args.batch_size == 0 or i + 1 == len(paths):
                    bar(i + 1, len(paths))
    finally:
        summary = folder.finish(len(paths))
    _print_table(summary["results"])
    sys.stdout.write(f"\nwrote {output / 'results.json'}\n")
    if summary["failed"]:
        sys.stderr.write(
            f"{summary['failed']} of {len(paths)} images failed; see their 'error' in "
            "results.json.\n"
        )
    return 1 if summary["failed"] else 0


def _print_table(rows: list[dict]) -> None:
    width = min(max([len(r["image"]) for r in rows] + [5]), 70)
    lines = [f"{'image':<{width}}  {'class':<16}  {'score':>7}"]
    for row in rows:
        image = row["image"] if len(row["image"]) <= width else "..." + row["image"][-width + 3 :]
        if "error" in row:
            lines.append(f"{image:<{width}}  FAILED: {row['error']}")
        else:
            lines.append(f"{image:<{width}}  {row['class_name'][:16]:<16}  {row['score']:7.4f}")
    sys.stdout.write("\n".join(lines) + "\n")


class _Progress:
    """A progress bar on a terminal; a log line per batch when stderr is a file or pipe."""

    def __init__(self, total: int, desc: str = "scoring") -> None:
        from tqdm import tqdm

        self.desc = desc
        self.bar = tqdm(total=total, unit="img", desc=desc, disable=None, file=sys.stderr)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def __call__(self, done: int, total: int) -> None:
        """Reports that ``done`` of ``total`` items are finished."""
        if self.bar.disable:
            logger.info("%s: %d/%d", self.desc, done, total)
        else:
            self.bar.update(done - self.bar.n)


def _progress(total: int, desc: str = "scoring") -> _Progress:
    return _Progress(total, desc)


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from adaclip.data import LAYOUTS

    parser = subparsers.add_parser(
        "evaluate",
        help="benchmark a checkpoint on a dataset: metrics.json, predictions.csv, curves",
        description="Score a dataset's test images and compute image and pixel metrics per "
        "category (MVTec AD, VisA, meta.json or plain-folder layouts).",
    )
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--categories", nargs="+", help="only these categories (default: all)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="default: auto-detect")
    parser.add_argument(
        "--pixel-size",
        type=positive_int,
        help="side at which pixel metrics are computed (default: S)",
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="data-loading processes"
    )
    parser.add_argument("--overlays", action="store_true", help="also write heat-map overlays")
    parser.add_argument("--output", default="adaclip-eval", help="output folder")
    add_model_options(parser)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluates a checkpoint on a dataset and writes the report; exits 1 if images failed."""
    from adaclip.data import load_dataset
    from adaclip.evaluate import evaluate, markdown_report, write_report

    samples = load_dataset(args.root, args.categories, args.layout)
    detector = detector_from_args(args)
    output = Path(args.output)
    with _progress(len(samples), "evaluating") as bar:
        evaluation = evaluate(
            detector,
            samples,
            batch_size=args.batch_size,
            pixel_size=args.pixel_size,
            workers=args.workers,
            overlay_dir=output / "overlays" if args.overlays else None,
            progress=bar,
        )
    settings = {k: v for k, v in vars(args).items() if k != "handler"}
    write_report(evaluation, output, settings)
    sys.stdout.write(markdown_report(evaluation) + f"\nwrote {output / 'metrics.json'}\n")
    if evaluation.failures:
        sys.stderr.write(
            f"{len(evaluation.failures)} of {len(samples)} images failed; they are listed under "
            "'failures' in metrics.json and left out of the metrics.\n"
        )
    return 1 if evaluation.failures else 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from adaclip.data import LAYOUTS

    parser = subparsers.add_parser(
        "train",
        help="train prompts and heads on auxiliary data, keep the best validation epoch",
        description="Train AdaCLIP's learnable parts (the CLIP backbone stays frozen) on the "
        "test splits of auxiliary datasets; writes best.pth, best.safetensors, config.json, "
        "last.pt, log.jsonl, log.csv and curves.png.",
    )
    parser.add_argument("--train", nargs="+", required=True, help="training dataset folders")
    parser.add_argument("--val", required=True, help="validation dataset folder")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="default: auto-detect")
    parser.add_argument("--output", default="adaclip-train", help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output")
    parser.add_argument("--init", help="start from this AdaCLIP checkpoint (default: fresh)")
    parser.add_argument("--epochs", type=positive_int, default=5, help="default: 5")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="default: 8")
    parser.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate (0.01)")
    parser.add_argument("--mosaic-prob", type=probability, default=0.5, help="default: 0.5")
    parser.add_argument("--seed", type=int, default=111, help="default: 111")
    parser.add_argument(
        "--max-steps", type=positive_int, help="steps per epoch at most (smoke runs)"
    )
    parser.add_argument("--pixel-size", type=positive_int, help="validation pixel-metric side (S)")
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="data-loading processes"
    )
    add_backbone_options(parser)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: bf16 autocast on a GPU that has it, fp32 on a CPU",
    )
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Trains (or resumes) a run and reports where the best checkpoint is."""
    from adaclip.train import TrainSettings, train

    settings = TrainSettings(
        train=tuple(args.train),
        val=args.val,
        output=args.output,
        layout=args.layout,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        image_size=args.image_size,
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        mosaic_prob=args.mosaic_prob,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        max_steps=args.max_steps,
        pixel_size=args.pixel_size,
        progress=sys.stderr.isatty(),
    )
    result = train(settings, resume=args.resume)
    sys.stdout.write(
        f"best epoch {result.best_epoch} (validation score {result.best_score:.4f}); "
        f"wrote {result.checkpoint}\n"
    )
    return 0


def _add_download(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="fetch checkpoints and the backbone into the Hugging Face cache",
        description="Pre-fetch weights for offline use (air-gapped machines, Space builds). "
        "Without options it fetches the 'all' checkpoint and the default backbone. Files go to "
        "the Hugging Face cache (HF_HOME, HF_HUB_CACHE); later runs work with HF_HUB_OFFLINE=1.",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        dest="checkpoints",
        metavar="SPEC",
        help="published name, hf://OWNER/REPO/PATH[@REVISION] or local file; repeatable",
    )
    parser.add_argument(
        "--backbone",
        help=f"open_clip model name whose weights to fetch (default alone: {DEFAULT_BACKBONE})",
    )
    parser.add_argument(
        "--pretrained",
        default=DEFAULT_PRETRAINED,
        help=f"open_clip pretrained tag of the backbone (default: {DEFAULT_PRETRAINED})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="download the checkpoints again even if cached, replacing a damaged copy (needs "
        "the network)",
    )
    parser.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    """Fetches and checks each asked-for checkpoint and backbone; prints where they are."""
    from adaclip.checkpoints import (
        DEFAULT_CHECKPOINT,
        fetch_backbone,
        fetch_checkpoint,
        hub_cache_dir,
    )

    specs = args.checkpoints or ([] if args.backbone else [DEFAULT_CHECKPOINT])
    backbone = args.backbone or (None if args.checkpoints else DEFAULT_BACKBONE)
    for spec in specs:
        path, state = fetch_checkpoint(spec, force=args.force)
        sys.stdout.write(f"checkpoint {spec}: {path} ({len(state)} tensors)\n")
    if backbone:
        path = fetch_backbone(backbone, args.pretrained)
        sys.stdout.write(f"backbone {backbone} ({args.pretrained}): {path}\n")
    sys.stdout.write(f"cache: {hub_cache_dir()}\n")
    return 0


def _add_checkpoints(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "checkpoints",
        help="list the published checkpoints and whether each is cached",
        description="List the published AdaCLIP checkpoints, what they were trained on, their "
        "size and whether each is already in the Hugging Face cache with the published sha256 "
        "(no network access).",
    )
    parser.set_defaults(handler=run_checkpoints)


def run_checkpoints(args: argparse.Namespace) -> int:
    """Prints the published checkpoints as a table, and the backbone's cache state."""
    from adaclip.checkpoints import CHECKPOINTS, cached_backbone, cached_status, hub_cache_dir

    rows = [("name", "trained on", "size", "cached")]
    for entry in CHECKPOINTS.values():
        cached = cached_status(entry)
        rows.append((entry.name, entry.trained_on, f"{entry.size_mb:.1f} MB", cached))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3] for row in rows
    ]
    backbone = "yes" if cached_backbone(DEFAULT_BACKBONE, DEFAULT_PRETRAINED) else "no"
    lines += [
        "",
        f"backbone {DEFAULT_BACKBONE} ({DEFAULT_PRETRAINED}, about 1.7 GB): cached {backbone}",
        f"cache: {hub_cache_dir()}",
        "All were trained at --image-size 518 on the ViT-L-14-336 backbone. Fetch them ahead "
        "with `python -m adaclip download --checkpoint NAME`.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the Gradio web demo (app.py); `serve --help` lists its options",
        description="Start the web demo; every option is passed on to app.py.",
        prefix_chars="+",  # so that --port etc. reach app.py untouched
        add_help=False,
    )
    parser.add_argument("app_args", nargs=argparse.REMAINDER, help="options of app.py")
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Runs the repository's ``app.py`` (next to the package) with the given options."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "app.py"
    if not path.is_file():
        raise AdaCLIPError(
            f"the web demo needs app.py from the source checkout, not found at {path}; "
            "clone the repository and run `python app.py` there."
        )
    spec = importlib.util.spec_from_file_location("adaclip_app", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app.main(args.app_args)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="adaclip", description="Zero-shot visual anomaly detection with AdaCLIP."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_predict(subparsers)
    _add_evaluate(subparsers)
    _add_train(subparsers)
    _add_download(subparsers)
    _add_checkpoints(subparsers)
    for command in subparsers.choices.values():  # -v also after the command's name
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
    _add_serve(subparsers)  # passes everything on to app.py
    return parser


def configure_logging(verbose: bool = False) -> None:
    """Our INFO lines on stderr; other libraries' only from WARNING up."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("adaclip").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Its own retry warnings repeat what our error message explains; keep them for -v.
    logging.getLogger("huggingface_hub").setLevel(logging.INFO if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 failed items, 2 error)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.handler(args)
    except AdaCLIPError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
