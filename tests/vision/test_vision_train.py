"""Training on real Fashion-MNIST: the loss falls, checkpoints load with weights_only,
resuming equals not stopping, evaluation and the CLI work end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sqvae_speech.cli import main as cli_main
from sqvae_speech.errors import ConfigError
from sqvae_speech.vision.config import resolve_config
from sqvae_speech.vision.evaluate import evaluate
from sqvae_speech.vision.train import load_vision_model, train

SMALL = ["data.train_limit=640", "data.val_limit=64", "data.test_limit=96", "model.quantizer.num_embeddings=32",
         "model.quantizer.embedding_dim=16", "train.log_every=5"]


def records(exp: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (exp / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_training_on_real_fashion_mnist_lowers_the_loss(vision_env: Path, tmp_path: Path) -> None:
    cfg = resolve_config(None, [*SMALL, "train.max_steps=45"], dataset="fashion_mnist", variant="gaussian_1")
    exp = tmp_path / "exp"
    summary = train(cfg, exp, progress=False)
    assert summary["step"] == 45 and summary["epoch"] == 2  # 20 steps per epoch of 640 images
    tr = records(exp, "train")
    assert [r["step"] for r in tr] == list(range(5, 50, 5))
    # AR-ELBO: 0.5 * 784 * log(MSE) falls as the reconstructions improve
    assert tr[-1]["loss"] < tr[0]["loss"] - 150 and tr[-1]["mse"] < 0.7 * tr[0]["mse"]
    val = records(exp, "val")
    assert [r["step"] for r in val] == [20, 40, 45] and val[-1]["loss"] < val[0]["loss"]
    assert all(r["lr"] == 1e-3 for r in val)

    ckpt = torch.load(max((exp / "checkpoints").glob("ckpt-*.pt")), weights_only=True)
    assert ckpt["step"] == 45 and ckpt["kind"] == "vision" and ckpt["config"]["model"]["quantizer"]["num_embeddings"] == 32
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "epoch", "position"}
    best = torch.load(exp / "best.pt", weights_only=True)
    assert best["best_val_loss"] == pytest.approx(min(r["loss"] for r in val), rel=1e-5)
    model, cfg2, step, path = load_vision_model(exp)
    assert cfg2 == cfg and path == exp / "best.pt" and not model.training

    r = evaluate(exp, split="test", device="cpu", progress=False)
    assert r.num_images == 96 and r.step == step and 1 <= r.used_codes <= 32
    assert 1.0 <= r.set_perplexity <= r.used_codes and 0 < r.mse < val[0]["mse"]
    saved = json.loads((exp / "results_test.json").read_text())
    assert saved["mse"] == pytest.approx(r.mse) and saved["pixel_accuracy"] is None  # strict JSON, no NaN
    assert saved["seed"] == r.seed == cfg.train.seed == 0  # sweep-plot groups runs by it
    assert (exp / "reconstructions_test.png").stat().st_size > 1000

    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, exp, progress=False)


def test_resume_equals_an_uninterrupted_run(vision_env: Path, tmp_path: Path) -> None:
    base = [*SMALL, "data.train_limit=320", "train.log_every=100"]
    straight = tmp_path / "straight"
    train(resolve_config(None, [*base, "train.max_steps=14"], variant="vqvae_ema"), straight, progress=False)
    split = tmp_path / "split"
    train(resolve_config(None, [*base, "train.max_steps=6"], variant="vqvae_ema"), split, progress=False)
    with open(split / "metrics.jsonl", "a") as f:  # as if a killed run had logged past its checkpoint
        f.write(json.dumps({"step": 9, "split": "train", "loss": 0.0}) + "\n")
        f.write('{"step": 10, "split": "tr')  # and been killed part-way through a line
    train(resolve_config(None, [*base, "train.max_steps=14"], variant="vqvae_ema"), split, resume=True, progress=False)
    steps = [r["step"] for r in records(split, "train") + records(split, "val")]
    assert sorted(steps) == [6, 10, 14]  # validations at 6 (stop), 10 (epoch end), 14; step 9 trimmed
    a = torch.load(straight / "checkpoints/ckpt-00000014.pt", weights_only=True)["model"]
    b = torch.load(split / "checkpoints/ckpt-00000014.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(Exception, match="num_embeddings"):
        train(resolve_config(None, [*base, "train.max_steps=16", "model.quantizer.num_embeddings=64"], variant="vqvae_ema"),
              split, resume=True, progress=False)


def test_cli_train_evaluate_sweep_plot(vision_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = str(vision_data / "mnist5k")
    exps = []
    for variant, k in (("gaussian_1", 16), ("vqvae_ema", 16), ("gaussian_1", 32)):
        exp = tmp_path / f"{variant}_K{k}"
        args = ["vision", "train", "--dataset", "mnist5k", "--variant", variant, "--exp", str(exp), "--data-root", root,
                "--max-steps", "4", "--device", "cpu", "--no-progress", "--set", f"model.quantizer.num_embeddings={k}",
                "--set", "data.val_limit=32", "--set", "model.quantizer.embedding_dim=8"]
        assert cli_main(args) == 0
        assert cli_main(["vision", "evaluate", "--exp", str(exp), "--limit", "40", "--no-progress", "--no-grid"]) == 0
        exps.append(str(exp))
    out = capsys.readouterr().out
    assert "mnist5k test gaussian_1 K=16 step 4: MSE" in out and "40 images" in out
    png, table = tmp_path / "ppl.png", tmp_path / "RESULTS.md"
    assert cli_main(["vision", "sweep-plot", *exps, "--out", str(png), "--table", str(table)]) == 0
    text = table.read_text()
    assert "| set perplexity (used codes) | K=16 | K=32 |" in text and "| VQ-VAE w/ EMA |" in text
    assert png.stat().st_size > 10_000 and text in capsys.readouterr().out

    # user errors: one line, exit 2
    assert cli_main(["vision", "train", "--dataset", "mnist5k", "--exp", exps[0], "--data-root", root]) == 2
    assert cli_main(["vision", "train", "--dataset", "cifar10", "--exp", str(tmp_path / "c"),
                     "--data-root", str(tmp_path / "nowhere")]) == 2
    assert cli_main(["vision", "evaluate", "--exp", str(tmp_path / "nothing")]) == 2
    assert cli_main(["vision", "evaluate", "--exp", *exps[:2], "--out", str(tmp_path / "r.json")]) == 2
    assert cli_main(["vision", "sweep-plot", str(tmp_path), "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "cifar-10-batches-py" in err and "results_test.json" in err and "one --exp" in err
    assert "Traceback" not in err
    assert math.isfinite(json.loads((Path(exps[1]) / "results_test.json").read_text())["batch_perplexity"])


def test_vmf_on_label_maps_train_and_evaluate(tmp_path: Path) -> None:
    """vMF SQ-VAE on CelebAMask-HQ-like class maps: trains, reports accuracy and mIoU, draws the maps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2), ("test", 3)):
        d = tmp_path / "data" / f"{split}_label"
        d.mkdir(parents=True)
        for i in range(n):
            a = np.zeros((64, 64), dtype=np.uint8)  # background 0, a "face" 1, two "eyes" 4 and 5
            cy, cx = rng.integers(24, 40, 2)
            a[cy - 16 : cy + 16, cx - 12 : cx + 12] = 1
            a[cy - 6 : cy - 2, cx - 8 : cx - 3] = 4
            a[cy - 6 : cy - 2, cx + 3 : cx + 8] = 5
            Image.fromarray(a).save(d / f"{i}.png")
    cfg = resolve_config(None, [f"data.root={tmp_path / 'data'}", "train.max_steps=100", "train.batch_size=4", "train.num_workers=0",
                                "model.quantizer.num_embeddings=16", "model.quantizer.embedding_dim=8"], dataset="celebamask_hq")
    assert cfg.model.variant == "vmf" and cfg.model.recon_kind == "vmf"
    exp = tmp_path / "exp"
    train(cfg, exp, progress=False)
    r = evaluate(exp, split="test", device="cpu", progress=False)
    # from chance (~1/19) to the background's share (0.81) after 100 small steps; the decoder's
    # softplus output (sony/sqvae vision/configs/celebamask_vmf.yaml) starts slower than a linear one
    assert r.num_images == 3 and 0.5 < r.pixel_accuracy <= 1.0 and 0.0 < r.miou <= 1.0
    assert len(r.per_class_iou) == 19 and math.isnan(r.per_class_iou[18])  # class 18 never occurs
    assert math.isnan(r.mse) and 1 <= r.used_codes <= 16
    saved = json.loads((exp / "results_test.json").read_text())
    assert saved["mse"] is None and saved["per_class_iou"][18] is None
    with Image.open(exp / "reconstructions_test.png") as im:
        assert im.mode == "RGB" and im.width > 3 * 64
