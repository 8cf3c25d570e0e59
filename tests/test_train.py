"""Training: losses, a few steps on the tiny random CLIP, checkpoints, logs and resuming."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from dataset_helpers import make_items, write_mvtec

from adaclip.checkpoint_io import read_state
from adaclip.cli import main
from adaclip.data import TrainSet, load_dataset
from adaclip.detector import Detector
from adaclip.errors import AdaCLIPError
from adaclip.losses import adaclip_loss, dice_loss, focal_loss
from adaclip.model import AdaCLIPOutput
from adaclip.train import (
    TrainSettings,
    build_model,
    check_resumable,
    make_optimizer,
    train_step,
    training_figure,
)

S = 112  # the checkpoint does not depend on S; a small side keeps the steps quick


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    return write_mvtec(tmp_path_factory.mktemp("bench"), make_items(normal=2, defective=2))


@pytest.fixture(scope="module")
def settings(benchmark, golden_model_args, tmp_path_factory) -> TrainSettings:
    val = tmp_path_factory.mktemp("val")
    write_mvtec(val, make_items(("widget",), normal=1, defective=1, seed=5))
    return TrainSettings(
        train=(str(benchmark),),
        val=str(val),
        output=str(tmp_path_factory.mktemp("run")),
        backbone=golden_model_args["backbone"],
        backbone_weights=golden_model_args["backbone_weights"],
        image_size=S,
        batch_size=4,
        device="cpu",
    )


def test_focal_loss_reduces_to_cross_entropy_and_down_weights_easy_items():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5]])
    target = torch.tensor([0, 1, 1])
    probs = logits.softmax(dim=1)
    assert focal_loss(probs, target, gamma=0.0) == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6
    )
    half = torch.tensor([[0.5, 0.5]])
    assert focal_loss(half, torch.tensor([1])) == pytest.approx(0.25 * math.log(2), rel=1e-6)
    maps = torch.rand(2, 2, 4, 4).softmax(dim=1)
    assert focal_loss(maps, torch.zeros(2, 4, 4, dtype=torch.long)).shape == ()


def test_dice_loss_values():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    assert dice_loss(mask, mask).item() == pytest.approx(0.0)
    disjoint = 1 - mask
    assert dice_loss(disjoint, mask).item() == pytest.approx(1 - 1 / (12 + 4 + 1))


def test_map_losses_skip_images_without_masks():
    B, N, G = 2, 4, 3
    output = AdaCLIPOutput(
        scores=torch.zeros(B),
        maps=torch.zeros(B, 8, 8),
        image_logits=torch.zeros(B, 2),
        layer_logits=torch.zeros(B, N, 2, G, G),
    )
    loss, parts = adaclip_loss(
        output, torch.zeros(B, 8, 8), torch.tensor([0.0, 1.0]), torch.tensor([False, False])
    )
    assert set(parts) == {"image", "total"}
    assert loss.item() == pytest.approx(0.25 * math.log(2))  # p_t = 1/2 for both images
    _, parts = adaclip_loss(
        output, torch.zeros(B, 8, 8), torch.tensor([0.0, 1.0]), torch.tensor([True, False])
    )
    assert {"focal", "dice"} <= set(parts)


def batch_loss(model, batch) -> float:
    images, masks, labels, has_mask, names = batch
    with torch.no_grad():
        return adaclip_loss(model(images, list(names)), masks, labels, has_mask)[1]["total"]


def test_a_few_steps_at_batch_size_four_lower_the_loss(settings, benchmark):
    model = build_model(settings)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = TrainSet(load_dataset(benchmark), S, mosaic_prob=0.0)
    batch = torch.utils.data.default_collate([dataset[i] for i in (0, 1, 2, 3)])
    assert batch[0].shape == (4, 3, S, S)
    optimizer = make_optimizer(model, settings)
    start = batch_loss(model, batch)
    for _ in range(3):
        train_step(model, optimizer, batch, torch.device("cpu"), None)
    assert batch_loss(model, batch) < 0.7 * start
    after = model.state_dict()
    learnable = set(model.learnable_state_dict())
    assert all(not torch.equal(before[k], after[k]) for k in learnable)
    assert all(torch.equal(before[k], after[k]) for k in set(after) - learnable)  # CLIP frozen


def test_bf16_autocast_step_runs(settings, benchmark):
    model = build_model(settings)
    dataset = TrainSet(load_dataset(benchmark), S, mosaic_prob=0.0)
    batch = torch.utils.data.default_collate([dataset[i] for i in (2, 3)])
    parts = train_step(
        model, make_optimizer(model, settings), batch, torch.device("cpu"), torch.bfloat16
    )
    assert math.isfinite(parts["total"])
    assert all(p.dtype == torch.float32 for p in model.learnable_state_dict().values())


def cli_train(settings: TrainSettings, output, *extra: str) -> int:
    return main(
        ["train", "--train", *settings.train, "--val", settings.val, "--output", str(output),
         "--backbone", settings.backbone, "--backbone-weights", settings.backbone_weights,
         "--image-size", str(S), "--device", "cpu", "--batch-size", "4", "--max-steps", "1",
         *extra]
    )  # fmt: skip


def test_train_writes_a_loadable_checkpoint_and_resumes_exactly(
    settings, benchmark, tmp_path, golden_model_args, capsys, caplog
):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli_train(settings, whole, "--epochs", "2") == 0
    assert cli_train(settings, split, "--epochs", "1") == 0
    assert cli_train(settings, split, "--epochs", "2", "--resume") == 0
    config = (split / "config.json").read_text()
    with caplog.at_level("WARNING", logger="adaclip"):
        assert cli_train(settings, split, "--epochs", "1", "--resume") == 0
    assert "nothing to train" in caplog.text and "already finished epoch 2" in caplog.text
    assert (split / "config.json").read_text() == config

    finished = [torch.load(d / "last.pt", weights_only=True) for d in (whole, split)]
    assert finished[0]["epoch"] == finished[1]["epoch"] == 2
    for key, value in finished[0]["learnable"].items():
        torch.testing.assert_close(finished[1]["learnable"][key], value, rtol=0, atol=0)
    logs = [
        [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (whole, split)
    ]
    assert [r["epoch"] for r in logs[1]] == [r["epoch"] for r in logs[0]]
    assert [r.get("total") for r in logs[1]] == [r.get("total") for r in logs[0]]

    (tmp_path / "probe").touch()
    usual = (tmp_path / "probe").stat().st_mode & 0o777  # what open() gives a new file
    for name in ("best.pth", "best.safetensors", "config.json", "log.csv", "curves.png"):
        assert (split / name).stat().st_size > 0, name
        assert (split / name).stat().st_mode & 0o777 == usual, name
    assert not [p.name for p in split.iterdir() if "partial" in p.name]
    assert len((split / "log.csv").read_text().splitlines()) == 1 + 2
    config = json.loads((split / "config.json").read_text())
    assert config["settings"]["lr"] == 0.01 and config["model"]["image_size"] == S
    best_pth, best_st = read_state(split / "best.pth"), read_state(split / "best.safetensors")
    assert all(k.startswith("clip_model.") for k in best_pth)
    assert all(torch.equal(best_pth[k], best_st[k]) for k in best_pth)

    args = {**golden_model_args, "checkpoint": str(split / "best.pth"), "image_size": S}
    assert Detector.from_pretrained(**args).predict(next(benchmark.rglob("*.png"))).ok
    report = tmp_path / "eval"
    cli_args = ["--backbone", settings.backbone, "--backbone-weights", settings.backbone_weights]
    code = main(
        ["evaluate", str(benchmark), "--checkpoint", str(split / "best.pth"), *cli_args,
         "--image-size", str(S), "--device", "cpu", "--output", str(report)]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["mean"]["pixel_f1max"] is not None


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_old_folders(
    settings, tmp_path, capsys
):
    output = tmp_path / "run"
    output.mkdir()
    (output / "last.pt").write_bytes(b"")  # an earlier run's state (never read here)
    assert cli_train(settings, output, "--epochs", "2") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli_train(settings, tmp_path / "new", "--epochs", "1", "--resume") == 2
    assert "does not exist" in capsys.readouterr().err
    elsewhere = dataclasses.replace(settings, train=(str(tmp_path / "no-data"),))
    assert cli_train(elsewhere, output, "--epochs", "2") == 2  # refused before reading data
    assert "pass --resume" in capsys.readouterr().err
    saved = {**settings.to_dict(), "lr": 0.02, "epochs": 1}
    with pytest.raises(AdaCLIPError, match=r"cannot resume .* \(lr: 0.02 -> 0.01\)"):
        check_resumable(saved, {**settings.to_dict(), "epochs": 3}, output / "last.pt")
    check_resumable(saved | {"lr": 0.01}, {**settings.to_dict(), "epochs": 3}, output / "last.pt")


def test_unreadable_training_images_are_skipped_and_named(settings, tmp_path, caplog, capsys):
    root = write_mvtec(tmp_path / "aux", make_items(("widget",), normal=2, defective=2, seed=8))
    broken = root / "widget" / "test" / "good" / "000.png"
    broken.write_bytes(b"not a png")
    changed = dataclasses.replace(settings, train=(str(root),))
    with caplog.at_level("WARNING", logger="adaclip"):
        assert cli_train(changed, tmp_path / "run", "--epochs", "1", "--mosaic-prob", "0") == 0
    assert any("000.png" in r.getMessage() for r in caplog.records)
    steps = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "step" and math.isfinite(r["total"]) for r in steps)

    for image in root.rglob("*.png"):
        image.write_bytes(b"")
    assert cli_train(changed, tmp_path / "none", "--epochs", "1") == 2
    assert "no training image could be read" in capsys.readouterr().err


def test_training_curves_have_whole_epoch_ticks():
    records = [{"kind": "step", "epoch": e, "step": e, "total": 1.0 / e} for e in (1, 2, 3)]
    records += [
        {"kind": "epoch", "epoch": e, "val_pixel_f1max": 0.1 * e, "val_image_auroc": None}
        for e in (1, 2, 3)
    ]
    figure = training_figure(records)
    figure.canvas.draw()
    for axis in figure.axes:
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert [line.get_label() for line in figure.axes[1].lines] == ["pixel_f1max"]
