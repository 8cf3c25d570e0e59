"""Training AdaCLIP's prompts and heads on auxiliary data (METHOD.md section 8).

Only the learnable parts train; the CLIP backbone stays frozen. Each epoch ends with a
validation run through the same :class:`Detector` path that evaluation uses, and the
checkpoint with the best mean validation pixel F1-max is kept. Every random choice derives
from ``(seed, epoch, index)``, so a resumed run repeats the uninterrupted one.

Writes under the output folder: ``best.pth`` (reference format), ``best.safetensors``,
``config.json`` (settings), ``last.pt`` (resumable state), ``log.jsonl`` and ``log.csv``
(losses and validation metrics) and ``curves.png``.

NOTE(paper): the fusion step clusters with scikit-learn K-means on detached features, so the
image loss reaches the weights through the class-token head, the text prompts and the
``1 - hsf_alpha`` share of the image feature, never through the cluster assignment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adaclip.backbone import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, load_backbone
from adaclip.checkpoint_io import check_state, save_checkpoint
from adaclip.checkpoints import fetch_checkpoint
from adaclip.config import AdaCLIPConfig
from adaclip.data import Sample, TrainSet, collate_train, load_dataset
from adaclip.detector import Detector, resolve_device
from adaclip.errors import AdaCLIPError
from adaclip.evaluate import Evaluation, evaluate
from adaclip.files import write_atomically
from adaclip.losses import adaclip_loss
from adaclip.model import AdaCLIP

logger = logging.getLogger(__name__)

TRAIN_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RESUME_FREE = ("epochs", "output", "workers", "progress", "max_steps")
"""Settings a resumed run may change; any other difference is refused."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that fixes a training run.

    Attributes:
        train: Training dataset folders (their test splits are the auxiliary data).
        val: Validation dataset folder (selects the best epoch).
        output: Folder for checkpoints, logs and curves.
        layout: Dataset layout of every folder (``auto`` detects each).
        backbone: open_clip model name or local JSON config.
        backbone_weights: A local backbone state dict instead of the pretrained download.
        pretrained: open_clip pretrained tag used without ``backbone_weights``.
        image_size: Input side ``S``.
        init: Optional AdaCLIP checkpoint to start from instead of a fresh initialisation.
        epochs: Total number of epochs.
        batch_size: Images per optimisation step.
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        mosaic_prob: Probability that a training item is a 2x2 mosaic of its category.
        focal_gamma: Focusing exponent of the focal losses.
        seed: Seed of the initialisation, the shuffling and the mosaics.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on a GPU that supports it, else fp32), ``fp32``,
            ``bf16`` or ``fp16`` (CUDA only, with loss scaling).
        workers: Data-loading processes.
        max_steps: Stop each epoch after this many steps (for smoke runs); ``None`` = all.
        pixel_size: Side at which validation pixel metrics are computed (``S`` if ``None``).
        progress: Show a progress bar on stderr.
    """

    train: tuple[str, ...]
    val: str
    output: str
    layout: str = "auto"
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    pretrained: str | None = DEFAULT_PRETRAINED
    image_size: int = 518
    init: str | None = None
    epochs: int = 5
    batch_size: int = 8
    lr: float = 0.01
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.01
    mosaic_prob: float = 0.5
    focal_gamma: float = 2.0
    seed: int = 111
    device: str = "auto"
    precision: str = "auto"
    workers: int = 0
    max_steps: int | None = None
    pixel_size: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.train:
            raise AdaCLIPError("give at least one training dataset folder (--train).")
        if self.epochs < 1 or self.batch_size < 1:
            raise AdaCLIPError(
                "epochs and batch size must be at least 1; "
                f"got {self.epochs} and {self.batch_size}."
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise AdaCLIPError(f"max steps must be at least 1; got {self.max_steps}.")
        if self.precision not in ("auto", *TRAIN_PRECISIONS):
            raise AdaCLIPError(
                f"precision must be auto, fp32, bf16 or fp16; got {self.precision!r}."
            )

    def to_dict(self) -> dict:
        """The settings as JSON-ready values."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class TrainResult:
    """How a run ended.

    Attributes:
        best_epoch: 1-based epoch of the kept checkpoint.
        best_score: Its validation selection score.
        checkpoint: Path of ``best.pth``.
        epochs_done: Epochs completed in total (including resumed ones).
        history: One record per epoch (loss, validation means).
    """

    best_epoch: int
    best_score: float
    checkpoint: Path
    epochs_done: int
    history: list[dict]


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name; ``None`` means plain fp32.

    Raises:
        AdaCLIPError: fp16 was asked for without a GPU.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type != "cuda":
        raise AdaCLIPError("fp16 training needs a CUDA GPU; use --precision bf16 or fp32.")
    return TRAIN_PRECISIONS[precision]


def build_model(settings: TrainSettings) -> AdaCLIP:
    """The frozen backbone plus seeded (or ``init``-loaded) learnable parts, on the CPU."""
    clip = load_backbone(
        settings.backbone, settings.backbone_weights, settings.pretrained, settings.image_size
    )
    torch.manual_seed(settings.seed)
    model = AdaCLIP(clip, AdaCLIPConfig(image_size=settings.image_size))
    if settings.init:
        _, state = fetch_checkpoint(settings.init)
        model.load_learnable(check_state(state, model.learnable_state_dict(), settings.init))
        logger.info("learnable parts initialised from %s", settings.init)
    return model


def learnable_parameters(model: AdaCLIP) -> list[torch.nn.Parameter]:
    """The parameters outside the frozen backbone."""
    return [p for name, p in model.named_parameters() if not name.startswith("clip.")]


def make_optimizer(model: AdaCLIP, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW over the learnable parameters."""
    return torch.optim.AdamW(
        learnable_parameters(model),
        lr=settings.lr,
        betas=settings.betas,
        weight_decay=settings.weight_decay,
    )


def train_step(
    model: AdaCLIP,
    optimizer: torch.optim.Optimizer,
    batch: tuple,
    device: torch.device,
    dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
    gamma: float = 2.0,
) -> dict[str, float]:
    """One optimisation step on a ``TrainSet`` batch; returns the loss parts."""
    images, masks, labels, has_mask, names = batch
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = model(images.to(device), list(names))
    loss, parts = adaclip_loss(
        output, masks.to(device), labels.to(device), has_mask.to(device), gamma
    )
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return parts


def selection_score(evaluation: Evaluation) -> tuple[str, float | None]:
    """The validation number that picks the best epoch: mean pixel F1-max.

    Falls back to mean image F1-max when the validation data has no masks.
    """
    for key in ("pixel_f1max", "image_f1max"):
        if evaluation.mean[key] is not None:
            return key, evaluation.mean[key]
    return "none", None


class Trainer:
    """Runs (or resumes) one training run described by :class:`TrainSettings`.

    TODO(#5): one device only; multi-GPU (DDP) training is not supported.
    """

    def __init__(self, settings: TrainSettings, resume: bool = False) -> None:
        self.settings = settings
        self.output = Path(settings.output)
        _check_output(self.output, resume)  # before minutes of loading data and weights
        self.device = resolve_device(settings.device)
        self.dtype = training_dtype(settings.precision, self.device)
        self.train_samples, groups = self._load_training_data()
        self.val_samples = load_dataset(settings.val, layout=settings.layout)
        seed_everything(settings.seed)
        self.model = build_model(settings).to(self.device)
        self.optimizer = make_optimizer(self.model, settings)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.dataset = TrainSet(
            self.train_samples, settings.image_size, settings.mosaic_prob, settings.seed, groups
        )
        self.epoch, self.step, self.best_epoch, self.best_score = 0, 0, 0, -float("inf")
        if resume:
            self._resume()
        else:
            (self.output / "log.jsonl").unlink(missing_ok=True)

    def _load_training_data(self) -> tuple[list[Sample], list[str]]:
        """All training folders' samples and a mosaic group (folder + category) per sample."""
        samples, groups = [], []
        for index, root in enumerate(self.settings.train):
            found = load_dataset(root, layout=self.settings.layout)
            samples += found
            groups += [f"{index}:{s.category}" for s in found]
        return samples, groups

    def run(self) -> TrainResult:
        """Trains the remaining epochs, validating and checkpointing after each."""
        self.output.mkdir(parents=True, exist_ok=True)
        history = [r for r in read_log(self.output) if r["kind"] == "epoch"]
        if self.epoch >= self.settings.epochs:
            logger.warning(
                "nothing to train: %s already finished epoch %d (--epochs %d); pass a larger "
                "--epochs to continue",
                self.output, self.epoch, self.settings.epochs,
            )  # fmt: skip
            return TrainResult(
                self.best_epoch, self.best_score, self.output / "best.pth", self.epoch, history
            )
        config = self._config_json()
        write_atomically(self.output / "config.json", lambda p: p.write_text(config))
        for epoch in range(self.epoch + 1, self.settings.epochs + 1):
            loss = self._train_epoch(epoch)
            record = self._validate(epoch, loss)
            history.append(record)
            self.epoch = epoch
            self._save_state()
            write_epoch_table(self.output, history)
            plot_training(self.output)
        return TrainResult(
            self.best_epoch, self.best_score, self.output / "best.pth", self.epoch, history
        )

    def _train_epoch(self, epoch: int) -> float:
        """One pass over the (shuffled, seeded) training data; returns the mean loss."""
        settings = self.settings
        self.dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=settings.batch_size,
            shuffle=True,
            num_workers=settings.workers,
            generator=torch.Generator().manual_seed(settings.seed * 1000 + epoch),
            collate_fn=collate_train,
        )
        steps = len(loader) if settings.max_steps is None else min(len(loader), settings.max_steps)
        losses = []
        with _progress(steps, f"epoch {epoch}", settings.progress) as bar:
            for i, batch in enumerate(loader):
                if i >= steps:
                    break
                bar.update(1)
                if batch is None:
                    continue  # every item of this batch was unreadable (each one logged)
                parts = train_step(
                    self.model, self.optimizer, batch, self.device, self.dtype, self.scaler,
                    settings.focal_gamma,
                )  # fmt: skip
                self.step += 1
                losses.append(parts["total"])
                append_log(
                    self.output, {"kind": "step", "epoch": epoch, "step": self.step, **parts}
                )
                bar.set_postfix(loss=f"{parts['total']:.4f}")
        if not losses:
            raise AdaCLIPError(
                f"epoch {epoch}: no training image could be read (see the warnings above); "
                "check the --train folders."
            )
        return float(np.mean(losses))

    def _validate(self, epoch: int, loss: float) -> dict:
        """Evaluates on the validation data, keeps the best checkpoint, logs the epoch."""
        started = time.perf_counter()
        detector = Detector(self.model, self.device, "fp32")
        evaluation = evaluate(
            detector, self.val_samples, self.settings.batch_size, self.settings.pixel_size,
            self.settings.workers,
        )  # fmt: skip
        self.model.train()
        key, score = selection_score(evaluation)
        if score is None:
            logger.warning("validation data defines no selection metric; keeping the last epoch")
        if score is None or score > self.best_score:
            self.best_epoch, self.best_score = epoch, score if score is not None else -float("inf")
            learnable = self.model.learnable_state_dict()
            for name in ("best.pth", "best.safetensors"):
                save_checkpoint(learnable, self.output / name)
        record = {
            "kind": "epoch",
            "epoch": epoch,
            "train_loss": loss,
            "selection": key,
            "score": score,
            "best_epoch": self.best_epoch,
            "val_seconds": round(time.perf_counter() - started, 2),
            **{f"val_{k}": v for k, v in evaluation.mean.items()},
        }
        append_log(self.output, record)
        logger.info(
            "epoch %d/%d: loss %.4f, val %s %s (best epoch %d)",
            epoch, self.settings.epochs, loss, key, "n/a" if score is None else f"{score:.4f}",
            self.best_epoch,
        )  # fmt: skip
        return record

    def _config_json(self) -> str:
        """The settings and the model config, as written to ``config.json``."""
        config = AdaCLIPConfig(image_size=self.settings.image_size)
        return json.dumps(
            {"settings": self.settings.to_dict(), "model": config.to_dict()}, indent=2
        )

    def _save_state(self) -> None:
        """Writes ``last.pt``: tensors and plain containers only (loads with weights_only)."""
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "learnable": {
                k: v.detach().cpu() for k, v in self.model.learnable_state_dict().items()
            },
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng_torch": torch.get_rng_state(),
            "settings": json.dumps(self.settings.to_dict()),
        }
        write_atomically(self.output / "last.pt", lambda p: torch.save(state, p))

    def _resume(self) -> None:
        """Restores ``last.pt`` after checking the run's settings still match."""
        path = self.output / "last.pt"
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_resumable(json.loads(state["settings"]), self.settings.to_dict(), path)
        self.model.load_learnable(state["learnable"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_torch"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]
        trim_log(self.output, self.epoch)
        logger.info("resuming %s after epoch %d (best epoch %d)", path, self.epoch, self.best_epoch)


def _check_output(output: Path, resume: bool) -> None:
    """Refuses to start over an earlier run, or to resume one that is not there."""
    state = output / "last.pt"
    if resume and not state.is_file():
        raise AdaCLIPError(f"cannot resume: {state} does not exist; start without --resume.")
    if not resume and state.exists():
        raise AdaCLIPError(
            f"{output} already holds a training run; pass --resume to continue it "
            "or choose another --output."
        )


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Refuses to resume when a setting other than :data:`RESUME_FREE` changed."""
    changed = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RESUME_FREE and saved.get(k) != current.get(k)
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise AdaCLIPError(
            f"cannot resume {path} with different settings ({details}); use the original "
            "settings or start a new run in another --output folder."
        )


def train(settings: TrainSettings, resume: bool = False) -> TrainResult:
    """Trains AdaCLIP as ``settings`` says; see :class:`Trainer`."""
    return Trainer(settings, resume).run()


def append_log(output: Path, record: dict) -> None:
    """Appends one JSON record to ``log.jsonl``."""
    with (output / "log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_log(output: Path) -> list[dict]:
    """The records of ``log.jsonl`` (none if it does not exist)."""
    path = output / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_log(output: Path, epoch: int) -> None:
    """Drops the log records of epochs after ``epoch`` (an interrupted epoch is redone)."""
    text = "".join(json.dumps(r) + "\n" for r in read_log(output) if r["epoch"] <= epoch)
    write_atomically(output / "log.jsonl", lambda p: p.write_text(text))


def write_epoch_table(output: Path, history: list[dict]) -> None:
    """Writes the per-epoch records to ``log.csv``."""
    import csv

    columns = list(dict.fromkeys(k for record in history for k in record if k != "kind"))

    def write(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: v for k, v in r.items() if k != "kind"} for r in history)

    write_atomically(output / "log.csv", write)


def plot_training(output: Path) -> None:
    """Plots the step losses and the validation metrics per epoch to ``curves.png``."""
    import matplotlib.pyplot as plt

    figure = training_figure(read_log(output))
    write_atomically(output / "curves.png", lambda p: figure.savefig(p, dpi=100))
    plt.close(figure)


def training_figure(records: list[dict]):
    """Loss per step (left) and validation means per epoch (right), integer ticks on x.

    Args:
        records: ``log.jsonl`` records (``kind`` ``step`` or ``epoch``).

    Returns:
        A matplotlib figure; close it when done.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in steps], [r["total"] for r in steps], linewidth=1)
    left.set(xlabel="step", ylabel="training loss", title="loss")
    for key in ("val_pixel_f1max", "val_pixel_auroc", "val_image_auroc"):
        points = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
        if points:
            right.plot(*zip(*points), marker="o", label=key.removeprefix("val_"))
    right.set(xlabel="epoch", ylabel="validation (mean over categories)", title="validation")
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if right.lines:
        right.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, file=sys.stderr)
