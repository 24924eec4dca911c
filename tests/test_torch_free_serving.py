"""Serving without torch: ONNX Runtime from a prepared export cache (ONNX + α head + manifest), as in the image.

The cache is prepared here with torch (the torch path: build from safetensors, export, parity check); then a fresh
Python process with torch and scipy made unimportable (a meta-path finder installed before anything else) loads
every served model from that cache and must give the same enhanced images (≤ 1e-5), the same strength and α,
the same tiling (receptive radius from the manifest) and the same triage as the torch-path engine, without ever
importing torch. The weights' sha256 is still checked against the card, and an unusable entry is exported again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.settings import DEFAULT_ENHANCER as ENHANCER
from core.settings import DEFAULT_QUALITY_ENHANCER as QUALITY
from core.settings import DEFAULT_TRIAGE as TRIAGE
from server.inference import InferenceEngine
from server.inference.backends import manifest_path, onnx_path, read_manifest
from tests.api_support import inference_settings, real_slice

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "scipy")

#: Runs in the torch-free process: args = settings JSON, inputs .npz, outputs .npz, report .json.
CHILD = textwrap.dedent(
    """
    import sys

    class Blocker:
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                self.attempts.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: torch-free serving test)")
            return None

    blocker = Blocker()
    sys.meta_path.insert(0, blocker)

    import json
    import numpy as np
    from core import InferenceSettings
    from server.inference import InferenceEngine

    settings_json, inputs, outputs, report = sys.argv[1:]
    settings = InferenceSettings.model_validate_json(open(settings_json).read())
    data = np.load(inputs)
    engine = InferenceEngine.from_settings(settings)
    tiled = InferenceEngine(list(engine._models.values()), settings.model_copy(update={{"tile_size": 128}}),
                            warm_up=False)
    try:
        fast = engine.enhance(data["image"], data["context"])
        quality = engine.enhance(data["image"], data["context"], model={quality!r})
        no_context = engine.enhance(data["image"])
        large = tiled.enhance(data["large"], data["context"])
        triage = engine.triage(data["image"][0])
        np.savez(outputs, fast=fast.images, quality=quality.images, no_context=no_context.images,
                 large=large.images)
        result = {{
            "models": engine.models(), "missing": engine.missing,
            "modules": [m.module is None for m in engine._models.values()],
            "radius": {{n: m.receptive_radius for n, m in engine._models.items()}},
            "strength": [fast.strength, quality.strength, no_context.strength],
            "alphas": [fast.alphas, quality.alphas, no_context.alphas],
            "backend": fast.backend, "triage": triage.probabilities,
            "imported": sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r}),
            "attempts": blocker.attempts,
        }}
    finally:
        engine.close()
        tiled.close()
    # Without a cache entry (an empty cache directory) nothing can be exported here: missing, with the reason.
    empty = InferenceEngine.from_settings(settings.model_copy(update={{"cache_dir": settings.cache_dir / "none"}}),
                                          warm_up=False)
    empty.close()
    result["empty_missing"] = empty.missing
    result["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
    open(report, "w").write(json.dumps(result))
    """
).format(blocked=BLOCKED, quality=QUALITY)


def _run_torch_free(settings_json: Path, inputs: Path, tmp: Path) -> tuple[dict[str, Any], Any]:
    outputs, report = tmp / "outputs.npz", tmp / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(settings_json), str(inputs), str(outputs), str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(report.read_text()), np.load(outputs)


def test_served_from_the_cache_without_torch_equals_the_torch_path(model_root: Path, tmp_path: Path) -> None:
    import torch

    from gan.registry import load_model
    from server.inference.tiling import receptive_radius

    cache = tmp_path / "cache"
    settings = inference_settings(model_root, cache)  # backend "auto": ONNX Runtime here, and in the image
    image = real_slice(64)[None]
    rng = np.random.default_rng(0)
    large = rng.random((1, 300, 257), dtype=np.float32) * 0.2 + np.kron(real_slice(100), np.ones((3, 3)))[:300, :257]
    context = np.linspace(0.0, 1.0, 22, dtype=np.float32)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, image=image, large=large.astype(np.float32), context=context)

    # 1. The torch path prepares the cache (export + parity + manifest) and gives the reference results.
    reference = InferenceEngine.from_settings(settings)
    whole = InferenceEngine(list(reference._models.values()), settings, warm_up=False)
    tiled = InferenceEngine(
        list(reference._models.values()), settings.model_copy(update={"tile_size": 128}), warm_up=False
    )
    try:
        assert reference.ready and sorted(m["name"] for m in reference.models()) == sorted([ENHANCER, QUALITY, TRIAGE])
        want_fast = reference.enhance(image, context)
        want_quality = reference.enhance(image, context, model=QUALITY)
        want_no_context = reference.enhance(image)
        want_large = tiled.enhance(large, context)
        want_whole = whole.enhance(large, context)
        want_triage = reference.triage(image[0])
    finally:
        for eng in (reference, whole, tiled):
            eng.close()
    for name in (ENHANCER, QUALITY, TRIAGE):
        card = reference.model(name).card
        assert read_manifest(cache, card) is not None and onnx_path(cache, card).is_file()
    # The reported figures are today's: α and radius of the torch module itself.
    module, card = load_model(model_root, ENHANCER)
    with torch.inference_mode():
        alphas = module.alphas(torch.from_numpy(context[None])).numpy()
    assert want_fast.strength == round(float(np.mean(alphas)), 4) and want_fast.strength is not None
    assert want_fast.alphas == tuple(round(float(a), 4) for a in alphas.mean(axis=0))
    radius = receptive_radius(module, card.input.channels, card.input.context_size, card.input.scale)
    assert reference.model(ENHANCER).receptive_radius == radius is not None
    assert len(want_large.images[0]) == 600 and np.abs(want_large.images - want_whole.images).max() <= 1e-5

    # 2. A fresh process that cannot import torch or scipy serves every model from that cache.
    written = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    settings_json = tmp_path / "settings.json"
    settings_json.write_text(settings.model_dump_json())
    got, arrays = _run_torch_free(settings_json, inputs, tmp_path)
    # Nothing of torch or scipy was imported; the only lookup is backend "auto" asking whether torch (for
    # TensorRT) exists at all (importlib.util.find_spec, which imports nothing).
    assert got["imported"] == [] and set(got["attempts"]) <= {"torch"}
    assert got["missing"] == {} and all(got["modules"])  # every model served, none through a torch module
    assert [m["name"] for m in got["models"]] == [m["name"] for m in reference.models()]
    assert [m["sha256"] for m in got["models"]] == [m["sha256"] for m in reference.models()]
    assert got["backend"] == "onnxruntime"
    assert got["radius"][ENHANCER] == radius and got["radius"][TRIAGE] is None
    for key, want in (("fast", want_fast), ("quality", want_quality), ("no_context", want_no_context),
                      ("large", want_large)):  # fmt: skip
        assert arrays[key].shape == want.images.shape
        assert np.abs(arrays[key] - want.images).max() <= 1e-5, key
    assert np.abs(arrays["large"] - want_whole.images).max() <= 1e-5  # tiles equal one whole pass
    assert got["strength"] == [want_fast.strength, want_quality.strength, want_no_context.strength]
    assert got["strength"][0] is not None and got["alphas"][0] == list(want_fast.alphas)
    assert got["alphas"] == [None if a is None else list(a) for a in (want_fast.alphas, want_quality.alphas,
                                                                       want_no_context.alphas)]  # fmt: skip
    assert got["triage"] == pytest.approx(want_triage.probabilities, abs=1e-6)
    assert sorted(got["empty_missing"]) == sorted([ENHANCER, QUALITY, TRIAGE])
    assert all(r.startswith("torch is not installed: no complete ONNX export") for r in got["empty_missing"].values())
    # Nothing was exported again: the files are the ones the torch path wrote (3 models, 2 α heads, 3 manifests).
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.is_file()} == written and len(written) == 8


def test_the_weights_sha256_is_checked_and_an_unusable_entry_is_exported_again(
    model_root: Path, tmp_path: Path
) -> None:
    from gan.registry import WEIGHTS_FILE

    root = tmp_path / "registry"
    shutil.copytree(model_root / ENHANCER, root / ENHANCER)
    cache = tmp_path / "cache"
    settings = inference_settings(root, cache, backend="onnxruntime")
    first = InferenceEngine.from_settings(settings, roles=("enhancer",), warm_up=False)
    first.close()
    card = first.model(ENHANCER).card
    manifest = manifest_path(cache, card)
    assert first.model(ENHANCER).module is None and manifest.is_file()

    # A changed ONNX file makes the entry unusable: exported again (torch is here), same file names.
    onnx = onnx_path(cache, card)
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    assert read_manifest(cache, card) is None
    again = InferenceEngine.from_settings(settings, roles=("enhancer",), warm_up=False)
    again.close()
    assert again.ready and read_manifest(cache, card) is not None

    # Weights that no longer match the card are refused before any cache lookup.
    weights = root / ENHANCER / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1] + b"\1")
    refused = InferenceEngine.from_settings(settings, roles=("enhancer",), warm_up=False)
    refused.close()
    assert "sha256 mismatch" in refused.missing[ENHANCER]
    assert json.loads(manifest.read_text())["sha256"] == card.sha256  # the cache entry is untouched
