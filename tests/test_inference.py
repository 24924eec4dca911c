"""The inference engine: backends (ONNX Runtime vs torch parity, export cache), warm-up, micro-batching, back-pressure.

Models: the real architectures with random-init weights in a temporary registry (see tests/api_support.py).
Batching tests hold the single batch worker at a gate (a wrapper around the real backend) so that what queues
meanwhile is deterministic; the inference itself is real.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.settings import DEFAULT_ENHANCER as ENHANCER
from core.settings import DEFAULT_QUALITY_ENHANCER as QUALITY
from core.settings import DEFAULT_TRIAGE as TRIAGE
from core.settings import InferenceSettings, Settings
from gan.export import TensorRTUnavailable, architecture_fingerprint, tensorrt_unavailable_reason
from gan.registry import load_model
from server.inference import InferenceEngine, MicroBatcher, ModelMissing, QueueFull, role_paths
from server.inference.backends import TorchBackend, manifest_path, onnx_path, resolve
from server.inference.engine import LoadedModel
from tests.api_support import (
    QUALITY_CONFIG,
    Service,
    inference_settings,
    png_bytes,
    real_slice,
    service_settings,
)


class GatedBackend:
    """The real torch backend, held at ``gate`` and recording each batch's input shapes."""

    def __init__(self, inner: TorchBackend, gate: threading.Event) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = gate
        self.batches: list[tuple[int, ...]] = []
        self.entered = threading.Event()

    def run(self, inputs: Any) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(30), "gate never opened"
        self.batches.append(tuple(inputs[0].shape))
        return self.inner.run(inputs)


def gated_engine(model_root: Path, tmp_path: Path, **settings: Any) -> tuple[InferenceEngine, GatedBackend]:
    module, card = load_model(model_root, ENHANCER)
    gate = threading.Event()
    backend = GatedBackend(TorchBackend(module), gate)
    eng = InferenceEngine([LoadedModel(card, module, backend)], inference_settings(model_root, tmp_path, **settings),
                          warm_up=False)  # fmt: skip
    return eng, backend


def occupy_worker(eng: InferenceEngine, backend: GatedBackend, pool: ThreadPoolExecutor) -> Any:
    """Start one request and wait until the worker holds it at the gate (the queue is then empty)."""
    first = pool.submit(eng.enhance, np.zeros((1, 32, 32), np.float32))
    assert backend.entered.wait(10)
    return first


def wait_depth(eng: InferenceEngine, depth: int) -> None:
    deadline = time.monotonic() + 10
    while eng.batcher.depth != depth:
        assert time.monotonic() < deadline, f"queue depth {eng.batcher.depth}, expected {depth}"
        time.sleep(0.005)


# --------------------------------------------------------------------------- backends


def test_onnxruntime_and_torch_agree_on_the_served_output(
    model_root: Path, tmp_path: Path, engine: InferenceEngine
) -> None:
    torch_engine = InferenceEngine.from_settings(inference_settings(model_root, tmp_path, backend="torch"))
    try:
        image = real_slice(96)[None]
        context = np.linspace(-1, 1, 22, dtype=np.float32)
        ort_out = engine.enhance(image, context)
        eager = torch_engine.enhance(image, context)
    finally:
        torch_engine.close()
    assert (ort_out.backend, eager.backend) == ("onnxruntime", "torch")
    assert ort_out.images.shape == eager.images.shape == (1, 192, 192)
    assert np.abs(ort_out.images - eager.images).max() < 1e-4
    assert ort_out.strength == eager.strength and ort_out.alphas == eager.alphas and ort_out.context_used


def test_unshuffle_trunk_serves_odd_sizes_on_both_backends(tmp_path: Path) -> None:
    """The shipped enhancer's trunk needs even sides: the engine pads and crops, identically on both backends."""
    import torch

    from gan.models import build
    from gan.registry import save_model

    torch.manual_seed(1)
    card = {"version": "0.0.0-test", "training": {"data": "none: random init", "command": "pytest", "seed": 1},
            "input": {"channels": 1, "scale": 2, "context_size": 22, "normalisation": "[0, 1]"},
            "synthetic_output": False}  # fmt: skip
    save_model(build("enhancer", trunk="unshuffle"), tmp_path / "reg", ENHANCER, "enhancer", {"trunk": "unshuffle"},
               card)  # fmt: skip
    image = real_slice(64)[None, :51, :47]
    outs = []
    for backend in ("onnxruntime", "torch"):
        eng = InferenceEngine.from_settings(
            inference_settings(tmp_path / "reg", tmp_path / "cache", backend=backend), roles=("enhancer",)
        )
        outs.append(eng.enhance(image).images)
        eng.close()
    assert outs[0].shape == outs[1].shape == (1, 102, 94)
    assert np.abs(outs[0] - outs[1]).max() < 1e-4


def test_a_model_of_another_version_than_the_settings_ask_is_not_served(model_root: Path, tmp_path: Path) -> None:
    settings = inference_settings(model_root, tmp_path, enhancer={"version": "9.9.9"})
    eng = InferenceEngine.from_settings(settings, warm_up=False)
    try:
        assert not eng.ready and eng.model(TRIAGE).card.version == "0.0.0-test"
        assert "holds version 0.0.0-test, the settings ask for 9.9.9" in eng.missing[ENHANCER]
        with pytest.raises(ModelMissing, match="AEGLE_INFERENCE__ENHANCER__VERSION"):
            eng.enhance(np.zeros((1, 32, 32), np.float32))
    finally:
        eng.close()


# --------------------------------------------------------------------------- operating points


def test_each_path_uses_its_operating_point_and_the_environment_chooses(
    engine: InferenceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests' settings serve both enhancers: live → fast, study → quality; AEGLE_INFERENCE__*_MODEL flips them."""
    served = engine.settings
    assert (served.enhancer_for("live").name, served.enhancer_for("study").name) == (ENHANCER, QUALITY)
    assert role_paths(served) == {"enhancer": ["live"], "quality_enhancer": ["study"], "triage": ["study", "classify"]}
    assert {m["name"] for m in engine.models()} == {ENHANCER, QUALITY, TRIAGE}
    assert engine.model(QUALITY).card.config == QUALITY_CONFIG and engine.model(ENHANCER).card.config == {}
    study = engine.enhance(real_slice(32)[None], model=served.enhancer_for("study").name)
    assert (study.model_name, study.model_version, len(study.alphas or ())) == (QUALITY, "0.0.1-test", 2)
    assert engine.enhance(real_slice(32)[None]).model_name == ENHANCER  # no model named: the fast one
    monkeypatch.delenv("AEGLE_CONFIG", raising=False)
    monkeypatch.setenv("AEGLE_INFERENCE__LIVE_MODEL", "quality")
    monkeypatch.setenv("AEGLE_INFERENCE__STUDY_MODEL", "fast")
    monkeypatch.setenv("AEGLE_INFERENCE__QUALITY_ENHANCER__VERSION", "1.0.0")
    flipped = Settings().inference
    assert flipped.enhancer_for("live") == flipped.quality_enhancer and flipped.quality_enhancer is not None
    assert (flipped.quality_enhancer.name, flipped.quality_enhancer.version) == (QUALITY, "1.0.0")
    assert flipped.enhancer_for("study") == flipped.enhancer and flipped.enhancer.name == ENHANCER
    monkeypatch.setenv("AEGLE_INFERENCE__STUDY_MODEL", "best")
    with pytest.raises(ValueError, match="'fast' or 'quality'"):
        Settings()


def test_the_quality_model_serves_the_study_path_unless_unset_or_not_chosen(
    engine: InferenceEngine, model_root: Path
) -> None:
    """The shipped defaults serve the quality model on the study path and the fast one on the live path; with
    ``quality_enhancer`` unset or ``study_model=fast`` the fast model serves both (loaded once, ready) and a quality
    model in the registry is not loaded while no path uses it."""
    shipped = InferenceSettings()
    assert shipped.quality_enhancer is not None and shipped.study_model == "quality"
    assert (shipped.enhancer_for("live"), shipped.enhancer_for("study")) == (shipped.enhancer, shipped.quality_enhancer)
    assert (shipped.enhancer.name, shipped.enhancer.version) == (ENHANCER, "3.1.0")
    assert (shipped.quality_enhancer.name, shipped.quality_enhancer.version) == (QUALITY, "1.0.0")
    assert role_paths(shipped)["enhancer"] == ["live"] and role_paths(shipped)["quality_enhancer"] == ["study"]
    cache = engine.settings.cache_dir
    for overrides in ({"quality_enhancer": None}, {"study_model": "fast"}):
        eng = InferenceEngine.from_settings(inference_settings(model_root, cache, **overrides), warm_up=False)
        eng.close()
        assert eng.ready and [m["name"] for m in eng.models()] == [ENHANCER, TRIAGE], overrides
        assert eng.settings.enhancer_for("study").name == ENHANCER
    # Both roles may name one model (loaded once), with one version: two would be two models under one name.
    same = inference_settings(model_root, cache, quality_enhancer={"name": ENHANCER, "version": None})
    eng = InferenceEngine.from_settings(same, warm_up=False)
    eng.close()
    assert eng.ready and [m["name"] for m in eng.models()] == [ENHANCER, TRIAGE]
    with pytest.raises(ValueError, match=r"same model \(enhancer-x2\) with different versions \(None and 3.1.0\)"):
        inference_settings(model_root, cache, quality_enhancer={"name": ENHANCER, "version": "3.1.0"})


def test_onnx_export_is_cached_by_weights_sha256(model_root: Path, tmp_path: Path) -> None:
    settings = inference_settings(model_root, tmp_path / "cache")
    first = InferenceEngine.from_settings(settings, roles=("enhancer",), warm_up=False)
    first.close()
    card = first.model(ENHANCER).card
    assert first.model(ENHANCER).module is None  # served from the entry just written, as a later start will be
    path = onnx_path(settings.cache_dir, card)
    fingerprint = architecture_fingerprint("enhancer")  # the architecture's source, read without torch
    assert path.name == f"{ENHANCER}-{card.sha256}-{fingerprint}.onnx" and path.is_file()
    manifest = json.loads(manifest_path(settings.cache_dir, card).read_text())
    assert manifest["sha256"] == card.sha256 and manifest["exporter"]["torch"] == torch.__version__
    assert manifest["alpha"] is not None and manifest["receptive_radius"] == first.model(ENHANCER).receptive_radius
    stamp = path.stat().st_mtime_ns
    second = InferenceEngine.from_settings(settings, roles=("enhancer",), warm_up=False)
    second.close()
    assert path.stat().st_mtime_ns == stamp  # reused, not re-exported
    names = sorted(p.name for p in settings.cache_dir.iterdir())  # no staging files left
    assert names == sorted([path.name, path.name.replace(".onnx", ".alpha.onnx"), path.name.replace(".onnx", ".json")])


def test_backend_choice_here_and_tensorrt_refused_with_the_reason(model_root: Path, tmp_path: Path) -> None:
    reason = tensorrt_unavailable_reason()
    assert reason is not None  # no CUDA on this machine
    assert resolve("auto") == "onnxruntime" and resolve("torch") == "torch"
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU"):
        InferenceEngine.from_settings(inference_settings(model_root, tmp_path, backend="tensorrt"))


def test_warm_up_runs_each_model_once_before_serving(model_root: Path, tmp_path: Path) -> None:
    module, card = load_model(model_root, ENHANCER)
    gate = threading.Event()
    gate.set()
    backend = GatedBackend(TorchBackend(module), gate)
    eng = InferenceEngine([LoadedModel(card, module, backend)], inference_settings(model_root, tmp_path))
    eng.close()
    assert backend.batches == [(1, 1, 64, 64)]


# --------------------------------------------------------------------------- micro-batching


def test_concurrent_requests_are_grouped_into_one_batch(model_root: Path, tmp_path: Path) -> None:
    eng, backend = gated_engine(model_root, tmp_path, max_batch=8, max_wait_ms=5)
    images = [real_slice(48)[None] * (i + 1) / 6 for i in range(5)]
    with ThreadPoolExecutor(8) as pool:
        first = occupy_worker(eng, backend, pool)
        waiting = [pool.submit(eng.enhance, im) for im in images]
        wait_depth(eng, 5)
        backend.gate.set()
        results = [f.result(30) for f in waiting]
        first.result(30)
    eng.close()
    assert backend.batches == [(1, 1, 32, 32), (5, 1, 48, 48)]
    assert eng.metrics.value("aegle_inference_batch_size_count", model=ENHANCER) == 2
    assert eng.metrics.value("aegle_inference_batch_size_sum", model=ENHANCER) == 6
    # A batched result equals the same image run alone (no padding, no cross-talk).
    alone = TorchBackend(load_model(model_root, ENHANCER)[0]).run([images[2][None], np.zeros((1, 22), np.float32)])
    assert np.abs(results[2].images - alone[:, 0]).max() < 1e-5


def test_different_shapes_never_share_a_batch(model_root: Path, tmp_path: Path) -> None:
    eng, backend = gated_engine(model_root, tmp_path, max_batch=8, max_wait_ms=5)
    with ThreadPoolExecutor(8) as pool:
        first = occupy_worker(eng, backend, pool)
        shapes = [(40, 40), (48, 40), (40, 40), (48, 40), (40, 40), (56, 56)]
        waiting = [pool.submit(eng.enhance, np.full((1, *s), 0.5, np.float32)) for s in shapes]
        wait_depth(eng, len(shapes))
        backend.gate.set()
        outs = [f.result(30) for f in waiting]
        first.result(30)
    eng.close()
    assert [o.images.shape[1:] for o in outs] == [(2 * h, 2 * w) for h, w in shapes]
    assert sorted(backend.batches[1:]) == [(1, 1, 56, 56), (2, 1, 48, 40), (3, 1, 40, 40)]


def test_large_images_run_in_smaller_batches_within_the_pixel_budget(model_root: Path, tmp_path: Path) -> None:
    """``max_batch_pixels`` bounds one batch's activations: 48² images go two at a time, 32² ones four."""
    eng, backend = gated_engine(model_root, tmp_path, max_batch=8, max_wait_ms=5, max_batch_pixels=2 * 48 * 48)
    with ThreadPoolExecutor(10) as pool:
        first = occupy_worker(eng, backend, pool)
        waiting = [pool.submit(eng.enhance, np.full((1, s, s), 0.5, np.float32)) for s in (48,) * 3 + (32,) * 5]
        wait_depth(eng, 8)
        backend.gate.set()
        for f in waiting:
            f.result(30)
        first.result(30)
    eng.close()
    assert sorted(backend.batches[1:]) == [(1, 1, 32, 32), (1, 1, 48, 48), (2, 1, 48, 48), (4, 1, 32, 32)]


def test_a_series_larger_than_max_batch_runs_in_parts(engine: InferenceEngine) -> None:
    before = engine.metrics.value("aegle_inference_batch_size_count", model=ENHANCER)
    out = engine.enhance(np.random.default_rng(0).random((11, 32, 32), dtype=np.float32))
    assert out.images.shape == (11, 64, 64) and not out.context_used
    assert engine.metrics.value("aegle_inference_batch_size_count", model=ENHANCER) - before == 2  # 8 + 3


def test_full_queue_raises_queue_full_with_a_retry_hint() -> None:
    gate = threading.Event()
    batcher = MicroBatcher(lambda _k, items: (gate.wait(30), list(items))[1], max_batch=2, max_wait_ms=0,
                           queue_max=3)  # fmt: skip
    held = batcher.submit("k", [1])
    deadline = time.monotonic() + 10
    while batcher.depth:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    queued = batcher.submit("k", [2, 3, 4])
    with pytest.raises(QueueFull, match=r"3/3 items waiting") as info:
        batcher.submit("k", [5])
    assert info.value.retry_after_s >= 1
    with pytest.raises(ValueError, match="exceed the queue capacity"):
        batcher.submit("k", [0] * 4)
    gate.set()
    assert [f.result(10) for f in held + queued] == [1, 2, 3, 4]
    assert batcher.submit("k", [5], timeout=None)[0].result(10) == 5  # room again
    batcher.close()


def test_api_answers_503_with_retry_after_when_the_queue_is_full(model_root: Path, tmp_path: Path) -> None:
    eng, backend = gated_engine(model_root, tmp_path / "cache", max_batch=1, max_wait_ms=0, queue_max=2)
    svc = Service(service_settings(tmp_path), eng)
    image = png_bytes((real_slice() * 255).astype(np.uint8))
    clin = svc.auth("clinician")
    with svc.client, ThreadPoolExecutor(4) as pool:
        first = occupy_worker(eng, backend, pool)
        queued = [pool.submit(eng.enhance, np.zeros((1, 32, 32), np.float32)) for _ in range(2)]
        wait_depth(eng, 2)
        r = svc.client.post("/api/v1/enhance", content=image, headers=clin)
        assert r.status_code == 503 and r.json()["detail"]["reason"] == "queue-full"
        assert int(r.headers["Retry-After"]) >= 1
        metrics = svc.client.get("/metrics", headers=svc.auth("operator")).text
        assert f'aegle_inference_rejected_total{{model="{ENHANCER}"}} 1.0' in metrics
        assert "aegle_inference_queue_depth 2.0" in metrics
        backend.gate.set()
        for f in [first, *queued]:
            f.result(30)
        assert svc.client.post("/api/v1/enhance", content=image, headers=clin).status_code == 200
    eng.close()


def test_triage_many_is_one_submission_with_the_per_image_results(engine: InferenceEngine) -> None:
    from gan.triage import TRIAGE_CLASSES

    def batches() -> float:
        return engine.metrics.registry.get_sample_value("aegle_inference_batch_size_count", {"model": TRIAGE}) or 0.0

    images = [real_slice(64), real_slice(96)[:80], np.flipud(real_slice(64)).copy()]
    before = batches()
    many = engine.triage_many(images)
    assert batches() - before == 1  # one batch for the three, not three
    assert [r.probabilities for r in many] == [engine.triage(image).probabilities for image in images]
    assert all(len(r.probabilities) == len(TRIAGE_CLASSES) for r in many)
    with pytest.raises(ValueError, match="32 pixels"):
        engine.triage_many([real_slice(64), real_slice(16)])
