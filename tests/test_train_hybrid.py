"""Hybrid GAN training on real lesion patches, generation with the criteria selection, and the shipped weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gan.lesions import lesion_patches
from gan.models.hybrid import QualityCriteria, SyntheticBatch
from gan.registry import DEFAULT_ROOT, WeightsIntegrityError, load_card, load_model
from gan.synthesis import STAGES, generate, load_generators
from gan.train.hybrid import HybridConfig, main, train_hybrid
from gan.train.plots import write_synthetic_grid

STEPS = 24
SHIPPED_COMMAND = "python -m gan.train_hybrid --out gan/weights --threads 1"  # as documented in docs/hybrid_gan.md


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three stages trained for a few steps through the CLI on real train/val lesion patches."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("hybrid")
    steps = [f"--{stage}-steps={STEPS}" for stage in STAGES]
    argv = ["--out", str(out), "--per-subject", "16", "--batch-size", "8", *steps, "--checkpoint-every", "10",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    return out


def _history(out: Path, stage: str) -> list[dict[str, float]]:
    return json.loads((out / f"hybrid-gan-{stage}" / "history.json").read_text())["losses"]


def _falls(history: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = [h[key] for h in history]
    return float(np.mean(values[:6])), float(np.mean(values[-6:]))


def test_a_few_steps_lower_the_losses(trained: Path) -> None:
    for stage, key in (("dcgan", "discriminator"), ("cgan", "content"), ("srgan", "content")):
        history = _history(trained, stage)
        assert len(history) == STEPS
        first, last = _falls(history, key)
        assert last < first, f"{stage} {key} loss did not fall: {first:.4f} -> {last:.4f}"


def test_checkpoints_cards_curves_and_marked_samples_are_written(trained: Path) -> None:
    for stage, (architecture, _) in STAGES.items():
        directory = trained / f"hybrid-gan-{stage}"
        _model, card = load_model(trained, f"hybrid-gan-{stage}")
        assert card.architecture == architecture and card.synthetic_output
        assert card.training.command.startswith("python -m gan.train_hybrid --out ")
        assert card.metrics["steps"] == STEPS and "generator_loss" in card.metrics
        assert card.training.data["subjects"] == ["pyradiomics:brain1", "pyradiomics:breast1", "pyradiomics:lung1"]
        for png in ("loss-generator.png", "loss-discriminator.png", "samples-synthetic.png"):
            assert (directory / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), png
        record = json.loads((directory / "samples-synthetic.png.json").read_text())
        assert record["synthetic"] is True and record["generator"].endswith(architecture)


def test_generate_keeps_labels_marks_synthetic_and_selects_the_top_fifth(trained: Path) -> None:
    labels = [1, 0, 0, 1, 1, 0, 1]
    batch = generate(trained, 7, labels, seed=3)
    assert isinstance(batch, SyntheticBatch) and batch.synthetic
    assert batch.generator == "dcgan-generator>cgan-generator>srgan-generator"
    assert batch.labels.tolist() == labels and batch.images.shape == (7, 3, 128, 128)
    assert batch.images.abs().max() <= 1.0
    torch.testing.assert_close(generate(trained, 7, labels, seed=3).images, batch.images)
    assert not torch.equal(generate(trained, 7, labels, seed=4).images, batch.images)

    # The kept 64×64 images are exactly the criteria's top 20 % of the 5× candidates of their label.
    selected = generate(trained, 7, labels, seed=3, refine=False)
    assert selected.images.shape == (7, 3, 64, 64)
    candidates = generate(trained, 35, [lab for lab in labels for _ in range(5)], seed=3, oversample=1, keep=1.0,
                          refine=False)  # fmt: skip
    for label in (0, 1):
        pool = candidates.images[candidates.labels == label]
        top, _ = QualityCriteria().select_top(pool, 0.2)
        mine = selected.images[selected.labels == label]
        assert sorted(map(float, top.sum(dim=(1, 2, 3)))) == pytest.approx(sorted(map(float, mine.sum(dim=(1, 2, 3)))))


def test_bad_requests_are_refused(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1"):
        generate(trained, 2, [0, 2])
    with pytest.raises(ValueError, match="labels must be one int or 3 values"):
        generate(trained, 3, [0, 1])
    with pytest.raises(ValueError, match="oversample"):
        generate(trained, 2, 1, oversample=4)
    with pytest.raises(ValueError, match="never be used for training"):
        train_hybrid(HybridConfig(out=str(tmp_path), splits=("train", "test")))
    test_patches = lesion_patches("test", per_subject=4)
    with pytest.raises(ValueError, match="never be used for training"):
        train_hybrid(HybridConfig(out=str(tmp_path)), test_patches)
    batch = generate(trained, 2, 0, refine=False)
    with pytest.raises(ValueError, match="say so in its name"):
        write_synthetic_grid(tmp_path / "grid.png", batch)


def test_shipped_weights_load_checked_and_generate_marked_images(tmp_path: Path) -> None:
    generators = load_generators(DEFAULT_ROOT)  # sha256 of every weights file checked against its card
    for stage in STAGES:
        card = load_card(DEFAULT_ROOT / f"hybrid-gan-{stage}" / "card.json")
        assert (
            card.synthetic_output
            and card.training.command == "python -m gan.train_hybrid --out gan/weights --threads 1"
        )
    batch = generate(None, 6, [0, 1, 1, 0, 0, 1], seed=0, generators=generators)
    assert batch.synthetic and batch.labels.tolist() == [0, 1, 1, 0, 0, 1]
    assert batch.images.shape == (6, 3, 128, 128) and torch.isfinite(batch.images).all()
    assert batch.images.std() > 0.01  # not a constant image

    tampered = tmp_path / "weights"
    shutil.copytree(DEFAULT_ROOT / "hybrid-gan-srgan", tampered / "hybrid-gan-srgan")
    weights = tampered / "hybrid-gan-srgan" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256 mismatch"):
        load_model(tampered, "hybrid-gan-srgan")
