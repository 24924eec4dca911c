"""Enhancer losses, training pairs and the training loop, on real images (pydicom CT/MR, MNI152)."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.context import CHANNELS, CONTEXT_FIELDS, CONTEXT_SIZE
from gan import data, metrics
from gan.intensity import normalise_volume
from gan.losses import (
    LOSSES,
    EnhancerLoss,
    FeatureNetwork,
    L1Loss,
    PerceptualLoss,
    SSIMLoss,
    discriminator_loss,
    generator_adversarial_loss,
)
from gan.models.enhancer import DiscriminatorOutput
from gan.registry import load_card, load_model
from gan.train.data import PreparedSlice, make_pairs, prepare_slices, training_splits
from gan.train.enhancer import TrainConfig, main, train_enhancer


@pytest.fixture(scope="module")
def volumes() -> list[data.Volume]:
    """pydicom CT/MR/CR images plus the MNI152 template (real data, loaded once)."""
    return data.load("pydicom") + data.load("mni152")


@pytest.fixture(scope="module")
def ct_slice(volumes: list[data.Volume]) -> np.ndarray:
    """A windowed real CT slice in [0, 1] (float64)."""
    ct = next(v for v in volumes if v.subject == "dicom:CQ500-CT-310")
    return normalise_volume(ct).astype(np.float64)


# ------------------------------------------------------------------------------------------------------- losses


def test_ssim_loss_matches_numpy_metric_on_a_real_slice(ct_slice: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(ct_slice + rng.normal(0, 0.05, ct_slice.shape), 0, 1)
    blurred = np.clip(ct_slice[:-3, 2:] * 0.9 + 0.05, 0, 1)  # non-square, other statistics
    for ref, test in ((ct_slice, noisy), (ct_slice[:-3, 2:], blurred)):
        expected = 1.0 - metrics.ssim(ref, test, 1.0)
        for dtype in (torch.float32, torch.float64):
            got = SSIMLoss()(torch.tensor(test, dtype=dtype)[None, None], torch.tensor(ref, dtype=dtype)[None, None])
            assert abs(float(got) - expected) < 1e-3
    assert float(SSIMLoss()(torch.tensor(ct_slice)[None, None], torch.tensor(ct_slice)[None, None])) == 0.0


def test_ssim_loss_is_differentiable() -> None:
    x = torch.rand(2, 1, 24, 24, requires_grad=True)
    SSIMLoss()(x, torch.rand(2, 1, 24, 24)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_l1_known_value() -> None:
    a = torch.zeros(1, 1, 2, 2)
    b = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    assert float(L1Loss()(a, b)) == pytest.approx(0.625)


def test_enhancer_loss_combines_weighted_terms(ct_slice: np.ndarray) -> None:
    hr = torch.tensor(ct_slice[:64, 100:164], dtype=torch.float32)[None, None]
    sr = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    l1, ss = float(L1Loss()(sr, hr)), float(SSIMLoss()(sr, hr))
    total, parts = EnhancerLoss({"l1": 2.0, "ssim": 0.5})(sr, hr)
    assert parts == pytest.approx({"l1": l1, "ssim": ss})
    assert float(total) == pytest.approx(2.0 * l1 + 0.5 * ss, rel=1e-6)
    total, parts = EnhancerLoss({"l1": 1.0, "ssim": 0.0})(sr, hr)  # zero weight: term not even built
    assert set(parts) == {"l1"} and float(total) == pytest.approx(l1)
    with pytest.raises(ValueError, match="unknown loss"):
        EnhancerLoss({"vgg": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        EnhancerLoss({"l1": -1.0})
    assert set(LOSSES) == {"l1", "mse", "ssim", "perceptual", "adversarial"}
    total, parts = EnhancerLoss({"mse": 1.0, "l1": 0.0})(sr, hr)
    assert set(parts) == {"mse"} and float(total) == pytest.approx(float(((sr - hr) ** 2).mean()), rel=1e-6)


def test_perceptual_loss_with_se_trunk_and_user_vgg19(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    se = FeatureNetwork.se_classifier()
    assert len(se(x)) == 4 and not any(p.requires_grad for p in se.parameters())
    term = PerceptualLoss(se)
    assert float(term(x, x)) == 0.0 and float(term(x, y)) > 0
    total, parts = EnhancerLoss({"l1": 1.0, "perceptual": 0.1}, {"perceptual": {"network": se}})(x, y)
    assert float(total) == pytest.approx(parts["l1"] + 0.1 * parts["perceptual"], rel=1e-6)
    # A VGG-19 state dict in torchvision's layout (random here: nothing is downloaded) loads into our layers.
    from gan.losses import _vgg19_features

    state = {f"features.{k}": v for k, v in _vgg19_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "vgg19.pth")
    vgg = FeatureNetwork.vgg19(tmp_path / "vgg19.pth", taps=(8,))
    (feats,) = vgg(x)
    assert feats.shape == (2, 128, 16, 16) and vgg.kind == "vgg19"


def test_adversarial_losses() -> None:
    logits = torch.tensor([[2.0], [-1.0]])
    out = DiscriminatorOutput(patch=torch.zeros(2, 1, 2, 2), global_=logits, combined=logits)
    expected = float(torch.nn.functional.softplus(-logits).mean())  # −log σ(x)
    assert float(generator_adversarial_loss(out)) == pytest.approx(expected)
    assert float(generator_adversarial_loss(out, "hinge")) == pytest.approx(-0.5)
    assert float(discriminator_loss(out, out, "hinge")) == pytest.approx((0 + 2) / 2 + (3 + 0) / 2)
    d_bce = float(discriminator_loss(out, out))
    assert d_bce == pytest.approx(expected + float(torch.nn.functional.softplus(logits).mean()))


# -------------------------------------------------------------------------------------------------------- pairs


def test_make_pairs_on_real_ct_and_mr(volumes: list[data.Volume]) -> None:
    parts = training_splits(volumes)
    train = parts["train"]
    assert not {v.subject for v in train + parts["val"]} & data.HELD_OUT_TEST_SUBJECTS
    batch = make_pairs(train, 2, np.random.default_rng(3), 48, patch=64)
    assert batch.hr.shape == (48, 1, 64, 64) and batch.lr.shape == (48, 1, 32, 32)
    assert batch.context.shape == (48, CONTEXT_SIZE)
    for t in (batch.lr, batch.hr):
        assert t.dtype == torch.float32 and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert not set(batch.subjects) & data.HELD_OUT_TEST_SUBJECTS
    assert set(batch.subjects) <= {v.subject for v in train}
    modalities = {v.subject: v.modality for v in train}
    assert {"CT", "MR"} <= {modalities[s] for s in batch.subjects}

    z = batch.context[:, [CONTEXT_FIELDS.index(f"z_{c}") for c in CHANNELS]]
    mask = batch.context[:, [CONTEXT_FIELDS.index(f"mask_{c}") for c in CHANNELS]]
    fresh = batch.context[:, [CONTEXT_FIELDS.index(f"fresh_{c}") for c in CHANNELS]]
    for i, observed in enumerate(batch.observed):
        present = torch.tensor([observed[c] is not None for c in CHANNELS], dtype=torch.float32)
        assert torch.equal(mask[i], present)
        assert torch.all(z[i][present == 0] == 0) and torch.all(fresh[i][present == 0] == 0)
        assert torch.all(fresh[i][present == 1] > 0)
        assert float(batch.context[i, -1]) == pytest.approx(float(present.mean()))
    assert 0 < float(mask.mean()) < 1  # some channels missing, most present
    # The vitals drive the degradation: agitated samples get motion blur, resting ones none.
    motion = np.array([t["motion"] for t in batch.true_levels])
    blur = np.array([p.motion_blur_px for p in batch.params])
    assert blur[motion > 6.5].min() > 1 and blur[motion < 0.2].max() == 0
    assert all(0.01 <= p.noise_sigma <= 0.03 and p.scale == 2 for p in batch.params)


def test_make_pairs_refuses_held_out_subjects(volumes: list[data.Volume]) -> None:
    held = data.held_out_test(volumes)
    assert held
    with pytest.raises(ValueError, match="held-out"):
        make_pairs(held, 2, np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="held-out"):
        prepare_slices(volumes)
    assert len(make_pairs(held, 2, np.random.default_rng(0), 4, allow_held_out=True)) == 4


def test_make_pairs_is_deterministic_and_scale_4(volumes: list[data.Volume]) -> None:
    train = training_splits(volumes)["train"]
    a = make_pairs(train, 4, np.random.default_rng(7), 6, patch=64)
    b = make_pairs(train, 4, np.random.default_rng(7), 6, patch=64)
    assert a.lr.shape == (6, 1, 16, 16)
    assert torch.equal(a.lr, b.lr) and torch.equal(a.hr, b.hr) and torch.equal(a.context, b.context)


def test_make_pairs_dihedral_turns_the_clean_region_before_degrading(ct_slice: np.ndarray) -> None:
    """Each HR patch is one of the 8 flips/rotations of the same region, and its LR is degraded from that turn."""
    region = ct_slice[150:230, 180:260].astype(np.float32)  # patch 64 + 2·8 margin: the crop is the whole slice
    pool = [PreparedSlice("dicom:CQ500-CT-310", "test", "CT", "HEAD", region)]
    turns = [np.rot90(region.T if k >= 4 else region, k % 4)[8:-8, 8:-8] for k in range(8)]
    plain = make_pairs(pool, 2, np.random.default_rng(0), 8, patch=64, noise_sigma=(0.0, 0.0))
    assert all(np.array_equal(hr[0], turns[0]) for hr in plain.hr.numpy())
    batch = make_pairs(pool, 2, np.random.default_rng(0), 32, patch=64, noise_sigma=(0.0, 0.0), dihedral=True)
    means = [t.reshape(32, 2, 32, 2).mean(axis=(1, 3)) for t in turns]  # ×2 block mean, before any blur
    seen = set()
    for lr, hr in zip(batch.lr.numpy()[:, 0], batch.hr.numpy()[:, 0], strict=True):
        k = next(k for k, t in enumerate(turns) if np.array_equal(hr, t))
        seen.add(k)
        errors = [float(np.abs(lr - m).mean()) for m in means]
        assert int(np.argmin(errors)) == k  # the LR image was made from this very turn
    assert len(seen) >= 6  # 32 uniform draws over 8 turns


# ----------------------------------------------------------------------------------------------------- training


def _tiny(tmp_path: Path, **overrides: object) -> TrainConfig:
    base = dict(
        out=str(tmp_path),
        steps=30,
        batch_size=8,
        patch=64,
        channels=16,
        n_blocks=2,
        lr=1e-3,
        val_every=15,
        val_pairs=8,
        seed=1,
        log_every=10,
        train_pool=8,  # one fixed batch of real pairs: the loss must go down when the model fits it
        threads=1,
    )
    return TrainConfig(**(base | overrides))  # type: ignore[arg-type]


def test_training_lowers_the_loss_deterministically_and_checkpoints(volumes: list[data.Volume], tmp_path: Path) -> None:
    first = train_enhancer(_tiny(tmp_path / "a"), volumes)
    again = train_enhancer(_tiny(tmp_path / "b"), volumes)
    assert first.train_loss == again.train_loss  # fixed seeds: bit-identical runs
    assert len(first.train_loss) == 30
    assert np.mean(first.train_loss[-5:]) < np.mean(first.train_loss[:5])
    assert not {*first.train_subjects, *first.val_subjects} & data.HELD_OUT_TEST_SUBJECTS
    assert {h["step"] for h in first.val_history} == {15.0, 30.0}
    for key in ("val_psnr", "val_ssim", "bicubic_psnr", "bicubic_ssim", "val_loss"):
        assert math.isfinite(first.metrics[key])

    model, card = load_model(tmp_path / "a", first.checkpoint.name)
    assert card.training.seed == 1 and card.metrics["best_step"] == first.best_step
    assert card.config["conditioning"] == "alpha" and card.input.scale == 2
    assert "mni152" in card.training.data["train_subjects"] + card.training.data["val_subjects"]
    batch = make_pairs(training_splits(volumes)["val"], 2, np.random.default_rng(0), 4)
    with torch.no_grad():
        assert torch.equal(model(batch.lr, batch.context), first.model(batch.lr, batch.context))

    png = first.loss_curve.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR" and png.endswith(b"IEND\xaeB`\x82")
    _check_png_chunks(png)


def _check_png_chunks(png: bytes) -> None:
    """Every chunk's CRC is right and the IDAT stream inflates to H·(1 + 3W) bytes."""
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(png):
        n = int.from_bytes(png[pos : pos + 4], "big")
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        assert int.from_bytes(png[pos + 8 + n : pos + 12 + n], "big") == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = (int.from_bytes(body[4:8], "big"), int.from_bytes(body[:4], "big"))
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert len(zlib.decompress(idat)) == size[0] * (1 + 3 * size[1])


def test_blind_adversarial_variant_and_cli(volumes: list[data.Volume], tmp_path: Path) -> None:
    config = _tiny(tmp_path, steps=4, val_every=2, blind=True, conditioning="none", adversarial_weight=0.01)
    result = train_enhancer(config, volumes)
    assert result.checkpoint.name == "enhancer-none-blind-x2"
    assert (tmp_path / "enhancer-none-blind-x2-discriminator" / "card.json").is_file()
    card = load_card(result.checkpoint / "card.json")
    assert card.input.model_extra["context"].startswith("zeroed")

    code = main(
        ["enhancer", "--steps", "2", "--out", str(tmp_path / "cli"), "--conditioning", "film", "--seed", "3",
         "--batch-size", "2", "--channels", "8", "--blocks", "1", "--val-every", "2", "--val-pairs", "2",
         "--data", "pydicom", "--threads", "1", "--augment", "--noise-input", "map"]
    )  # fmt: skip
    assert code == 0
    card = load_card(tmp_path / "cli" / "enhancer-film-x2" / "card.json")
    assert card.training.command.startswith("python -m gan.train enhancer --steps 2")
    assert card.training.seed == 3
    assert card.training.data["degradation"].endswith("random flips/rotations")
    assert card.config["noise_input"] == "map"


def test_perceptual_and_frozen_feature_network_in_training(volumes: list[data.Volume], tmp_path: Path) -> None:
    se = FeatureNetwork.se_classifier()
    before = {k: v.clone() for k, v in se.state_dict().items()}
    se.train()
    assert not se.training
    term = PerceptualLoss(se)
    model = nn.Conv2d(1, 1, 3, padding=1)
    x = make_pairs(training_splits(volumes)["train"], 2, np.random.default_rng(0), 2).hr
    term(model(x), x).backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in se.state_dict().items())  # BN statistics untouched


def test_feature_network_from_a_registry_classifier(
    volumes: list[data.Volume], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--feature-network se-classifier:<name>`` loads that classifier's trunk from the default weights root
    (``se-classifier:<root>/<name>`` from another registry root)."""
    from gan import registry
    from gan.models import build

    torch.manual_seed(5)
    classifier = build("se-classifier", in_channels=1)
    card = {
        "version": "test", "training": {"data": "none (plumbing test)", "command": "test", "seed": 5},
        "input": {"channels": 1, "scale": 1, "context_size": 0, "normalisation": "[0, 1]"}, "synthetic_output": False,
    }  # fmt: skip
    registry.save_model(classifier, tmp_path / "weights", "triage-test", "se-classifier", {"in_channels": 1}, card)
    monkeypatch.setattr(registry, "DEFAULT_ROOT", tmp_path / "weights")

    network = FeatureNetwork.from_spec("se-classifier:triage-test")
    assert network.kind == "se-classifier:triage-test"
    trunk = classifier.features.state_dict()
    assert all(torch.equal(v, trunk[k]) for k, v in network.layers.state_dict().items())
    with pytest.raises(registry.ModelCardError):
        FeatureNetwork.from_spec("se-classifier:no-such-classifier")
    elsewhere = FeatureNetwork.from_spec(f"se-classifier:{tmp_path / 'weights' / 'triage-test'}")  # <root>/<name> form
    assert all(torch.equal(v, trunk[k]) for k, v in elsewhere.layers.state_dict().items())

    config = _tiny(tmp_path / "run", steps=2, val_every=2, perceptual_weight=0.1, feature_network=network.kind)
    result = train_enhancer(config, volumes)
    assert math.isfinite(result.metrics["val_loss"]) and len(result.train_loss) == 2
    assert "'perceptual': 0.1" in load_card(result.checkpoint / "card.json").notes


def test_gan_exports_resolve_and_no_submodule_hides_one() -> None:
    """Every public name loads; the two that are also command modules cannot be imported as modules (which would
    replace the function on the package)."""
    import importlib

    import gan

    assert all(getattr(gan, name) is not None for name in gan.__all__)
    root = Path(gan.__file__).parent
    shadowed = {name for name in gan.__all__ if (root / f"{name}.py").exists() or (root / name).is_dir()}
    assert shadowed == {"train_classifier", "train_hybrid"}
    for command in shadowed:
        with pytest.raises(ImportError, match="python -m"):
            importlib.import_module(f"gan.{command}")
        assert callable(getattr(gan, command))
