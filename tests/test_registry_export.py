"""Weights registry (model cards, integrity) and ONNX/TensorRT export, on a tiny real conv net (CPU only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402

import gan.models  # noqa: E402
from gan import export, registry  # noqa: E402

CONTEXT = 22


class TinyNet(nn.Module):
    """1-channel ×2 super-resolution net modulated by an N×22 context vector (FiLM), like the enhancer."""

    def __init__(self, width: int = 8, context_size: int = CONTEXT) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, width, 3, padding=1)
        self.film = nn.Linear(context_size, 2 * width)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, image: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(context)[:, :, None, None].chunk(2, dim=1)
        h = torch.relu(self.head(image))
        h = torch.relu(self.body(h) * (1 + gamma) + beta)
        return self.shuffle(self.tail(h))


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> TinyNet:
    """A seeded TinyNet registered as architecture ``tiny`` for the duration of the test."""
    monkeypatch.setitem(gan.models.ARCHITECTURES, "tiny", f"{__name__}:TinyNet")
    torch.manual_seed(0)
    return TinyNet(width=8).eval()


def _extra(**overrides: Any) -> dict[str, Any]:
    extra = {
        "version": "0.0.1",
        "training": {"data": "synthetic", "command": "pytest", "seed": 0},
        "metrics": {"psnr": 30.5},
        "input": {"channels": 1, "scale": 2, "context_size": CONTEXT, "normalisation": "[0, 1]"},
        "synthetic_output": True,
        "notes": "test model",
    }
    return extra | overrides


def _inputs(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(batch, 1, height, width), torch.randn(batch, CONTEXT)


# --------------------------------------------------------------------------- registry


def test_round_trip_identical_outputs_and_card(tiny: TinyNet, tmp_path: Path) -> None:
    directory = registry.save_model(tiny, tmp_path, "tiny-sr", "tiny", {"width": 8}, _extra())
    assert directory == tmp_path / "tiny-sr"
    assert {p.name for p in directory.iterdir()} == {"model.safetensors", "card.json"}  # no temp files left
    assert {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()} == {  # readable package data
        "model.safetensors": 0o644, "card.json": 0o644}

    loaded, card = registry.load_model(tmp_path, "tiny-sr")
    assert isinstance(loaded, TinyNet) and not loaded.training
    x = _inputs(2, 16, 12)
    with torch.no_grad():
        assert torch.equal(loaded(*x), tiny(*x))

    raw = json.loads((directory / "card.json").read_text())
    assert set(raw) == set(registry.ModelCard.model_fields)
    assert card.sha256 == registry.sha256_file(directory / "model.safetensors") == raw["sha256"]
    assert card.sha256 == registry.state_dict_sha256(tiny)
    assert card.parameters == sum(p.numel() for p in tiny.parameters())
    assert (card.architecture, card.config, card.input.context_size) == ("tiny", {"width": 8}, CONTEXT)
    assert card.training.seed == 0 and card.synthetic_output is True
    assert [c.name for c in registry.list_models(tmp_path)] == ["tiny-sr"]


def test_tampered_weights_refused(tiny: TinyNet, tmp_path: Path) -> None:
    directory = registry.save_model(tiny, tmp_path, "tiny-sr", "tiny", {"width": 8}, _extra())
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(registry.WeightsIntegrityError, match=r"model\.safetensors: sha256 mismatch"):
        registry.load_model(tmp_path, "tiny-sr")


def test_wrong_config_strict_load_error(tiny: TinyNet, tmp_path: Path) -> None:
    directory = registry.save_model(tiny, tmp_path, "tiny-sr", "tiny", {"width": 8}, _extra())
    card = json.loads((directory / "card.json").read_text())
    card["config"] = {"width": 4}
    (directory / "card.json").write_text(json.dumps(card))
    with pytest.raises(registry.WeightsMismatchError, match=r"architecture 'tiny' with config \{'width': 4\}"):
        registry.load_model(tmp_path, "tiny-sr")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("sha256"), r"sha256\s+Field required"),
        (lambda c: c.update(colour="blue"), r"colour\s+Extra inputs are not permitted"),
        (lambda c: c["input"].pop("channels"), r"input\.channels\s+Field required"),
        (lambda c: c.update(parameters=-1), r"parameters\s+Input should be greater than or equal to 0"),
    ],
)
def test_bad_card_clear_error(tiny: TinyNet, tmp_path: Path, edit: Any, match: str) -> None:
    directory = registry.save_model(tiny, tmp_path, "tiny-sr", "tiny", {"width": 8}, _extra())
    card = json.loads((directory / "card.json").read_text())
    edit(card)
    (directory / "card.json").write_text(json.dumps(card))
    with pytest.raises(registry.ModelCardError, match=r"card\.json: invalid model card") as info:
        registry.load_model(tmp_path, "tiny-sr")
    assert info.match(match)
    with pytest.raises(registry.ModelCardError):
        registry.list_models(tmp_path)


def test_save_rejects_bad_arguments(tiny: TinyNet, tmp_path: Path) -> None:
    with pytest.raises(registry.ModelCardError, match="synthetic_output"):
        registry.save_model(tiny, tmp_path, "a", "tiny", {"width": 8}, _extra() | {"synthetic_output": "maybe"})
    with pytest.raises(ValueError, match="computed card fields: sha256"):
        registry.save_model(tiny, tmp_path, "a", "tiny", {"width": 8}, _extra(sha256="0" * 64))
    with pytest.raises(ValueError, match="model name"):
        registry.save_model(tiny, tmp_path, "../escape", "tiny", {"width": 8}, _extra())
    with pytest.raises(TypeError, match="not architecture"):
        registry.save_model(nn.Linear(2, 2), tmp_path, "a", "tiny", {}, _extra())
    assert not (tmp_path / "a" / "card.json").exists()
    assert registry.list_models(tmp_path / "missing") == []
    assert Path(registry.__file__).parent / "weights" == registry.DEFAULT_ROOT


# --------------------------------------------------------------------------- ONNX


def test_onnx_export_and_parity_dynamic_axes(tiny: TinyNet, tmp_path: Path) -> None:
    import onnx

    path = export.export_onnx(tiny, _inputs(1, 32, 32), tmp_path / "tiny.onnx", ["image", "context"], ["enhanced"])
    graph = onnx.load(path).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims == {"image": ["batch", 1, "image_height", "image_width"], "context": ["batch", CONTEXT]}

    cases = [_inputs(1, 32, 32), _inputs(3, 48, 40)]
    report = export.parity(tiny, path, cases, rtol=1e-4, atol=1e-4)
    assert report.passed and len(report.cases) == 2
    assert report.cases[1].input_shapes == ((3, 1, 48, 40), (3, CONTEXT))
    assert report.max_abs_error < 1e-4


def test_parity_failure_and_coverage(tiny: TinyNet, tmp_path: Path) -> None:
    path = export.export_onnx(tiny, _inputs(1, 16, 16), tmp_path / "tiny.onnx", ["image", "context"], ["out"])
    with torch.no_grad():
        tiny.tail.bias.add_(0.1)  # torch side now differs from the exported graph by 0.1
    with pytest.raises(export.ParityError, match=r"max abs 1\.000e-01") as info:
        export.parity(tiny, path, [_inputs(1, 16, 16), _inputs(2, 8, 12)], rtol=1e-4, atol=1e-4)
    assert not info.value.report.passed
    with pytest.raises(ValueError, match="two batch sizes"):
        export.parity(tiny, path, [_inputs(2, 16, 16), _inputs(2, 8, 8)])
    with pytest.raises(ValueError, match="two spatial sizes"):
        export.parity(tiny, path, [_inputs(1, 16, 16), _inputs(2, 16, 16)])


# --------------------------------------------------------------------------- TensorRT / backend


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU guard")
def test_tensorrt_unavailable_without_cuda(tiny: TinyNet, tmp_path: Path) -> None:
    with pytest.raises(export.TensorRTUnavailable, match="no CUDA GPU"):
        export.compile_tensorrt(tiny, _inputs(1, 16, 16), tmp_path)
    assert not list(tmp_path.iterdir())
    assert export.choose_backend(None) == "onnxruntime"
    with pytest.raises(export.TensorRTUnavailable, match="CUDA"):
        export.choose_backend("tensorrt")


def test_choose_backend_override_and_unknown() -> None:
    assert export.choose_backend("onnxruntime") == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        export.choose_backend("openvino")


def test_engine_cache_key_changes_with_every_component() -> None:
    base = {
        "gpu_name": "NVIDIA A100-SXM4-40GB",
        "compute_capability": (8, 0),
        "tensorrt_version": "10.3.0",
        "torch_tensorrt_version": "2.5.0",
        "model_sha256": "a" * 64,
        "inputs_signature": "(1, 1, 256, 256):torch.float32",
    }
    changed = {
        "gpu_name": "NVIDIA L4",
        "compute_capability": (8, 9),
        "tensorrt_version": "10.4.0",
        "torch_tensorrt_version": "2.6.0",
        "model_sha256": "b" * 64,
        "inputs_signature": "(1, 1, 512, 512):torch.float32",
    }
    key = export.engine_cache_key(**base)
    assert key == export.engine_cache_key(**base)
    keys = {export.engine_cache_key(**(base | {name: value})) for name, value in changed.items()}
    assert key not in keys and len(keys) == len(changed)


def test_tensorrt_engine_cache_logic_with_fake_backend(
    tiny: TinyNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cache hit / miss / corrupt-rebuild bookkeeping, with torch_tensorrt and the GPU faked (no real TensorRT)."""
    import sys
    import types

    calls: list[str] = []

    def fake_compile(model: nn.Module, ir: str, arg_inputs: list[torch.Tensor], **_: Any) -> nn.Module:
        assert ir == "dynamo" and not model.training
        calls.append("compile")
        return model

    def fake_save(module: nn.Module, path: str, arg_inputs: list[torch.Tensor]) -> None:
        Path(path).write_bytes(b"engine")

    def fake_load(path: str) -> Any:
        calls.append("load")
        if Path(path).read_bytes() != b"engine":
            raise RuntimeError("corrupt engine")
        return types.SimpleNamespace(module=lambda: tiny)

    trt = types.SimpleNamespace(__version__="2.5.0", compile=fake_compile, save=fake_save, load=fake_load)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(export, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(export, "_trt_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))

    x = _inputs(1, 16, 16)
    export.compile_tensorrt(tiny, x, tmp_path)
    engines = list(tmp_path.glob("*.ep"))
    assert calls == ["compile"] and len(engines) == 1
    assert len(engines[0].stem) == 64 and not list(tmp_path.glob(".*"))  # key-named, no temp files

    export.compile_tensorrt(tiny, x, tmp_path)  # same environment: cache hit
    assert calls == ["compile", "load"]

    trt.__version__ = "2.6.0"  # torch-tensorrt upgrade: new key, rebuilt
    export.compile_tensorrt(tiny, x, tmp_path)
    assert calls[-1] == "compile"
    (newest,) = set(tmp_path.glob("*.ep")) - set(engines)

    calls.clear()
    newest.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        export.compile_tensorrt(tiny, x, tmp_path)
    assert calls == ["load", "compile"] and newest.read_bytes() == b"engine"
