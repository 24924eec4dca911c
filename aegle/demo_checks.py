"""What the demo reports about each study: dciodvfy counts, before/after pictures, triage with its probabilities,
the context used and what that context changed in the output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from aegle.demo_report import save_png, side_by_side, to_grey

if TYPE_CHECKING:
    from aegle.demo import StudyRun
    from server import InferenceEngine

ROUTES = {"edge": "C-STORE to the edge node, forwarded over MQTT in chunks", "stow": "DICOMweb STOW-RS to the service"}


def dciodvfy_counts(paths: Sequence[Path]) -> tuple[int, int] | None:
    """Total (errors, warnings) dicom3tools' ``dciodvfy`` reports for the files; None when it is not installed."""
    from aegle.dicomcheck import dciodvfy

    errors = warnings = 0
    try:
        for path in paths:
            found_errors, found_warnings = dciodvfy(path)
            errors += len(found_errors)
            warnings += len(found_warnings)
    except FileNotFoundError:
        return None
    return errors, warnings

def pictures(r: StudyRun, workdir: Path) -> dict[str, Path]:
    """Before/after PNGs of the middle slice: the source bicubic-upsampled to the output size, the derived slice
    from the PACS, and both side by side, under the same window."""
    from gan import bicubic

    if not r.derived:
        return {}
    middle = r.sources[len(r.sources) // 2]
    by_source = {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID): d for d in r.derived}
    after_ds = by_source.get(str(middle.SOPInstanceUID))
    if after_ds is None:
        return {}
    before = _modality(middle)
    after = _modality(after_ds)
    if r.study.modality == "CT":
        window = (-600.0 - 750.0, -600.0 + 750.0)
    else:
        window = (float(before.min()), float(np.percentile(before, 99.5)))
    scale = after.shape[0] // before.shape[0]
    upsampled = bicubic(before[None], scale)[0]
    folder = workdir / "pictures"
    folder.mkdir(exist_ok=True)
    out = {}
    for name, grey in (("before", to_grey(upsampled, window)), ("after", to_grey(after, window))):
        out[name] = folder / f"{r.study.label}-{name}.png"
        save_png(grey, out[name])
    out["before | after"] = folder / f"{r.study.label}-before-after.png"
    save_png(side_by_side(to_grey(upsampled, window), to_grey(after, window)), out["before | after"])
    return out


def _modality(ds: Dataset) -> np.ndarray:
    """Stored pixels with RescaleSlope/Intercept applied."""
    return np.asarray(ds.pixel_array, np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0))



def _spacing(ds: Dataset) -> str:
    return " × ".join(f"{float(v):.4g}" for v in ds.get("PixelSpacing", [])) or "not given"


def _triage(r: StudyRun) -> dict[str, Any]:
    """The service's triage (from the result event): decisions, the middle slice's reason and the class
    probabilities averaged over the slices."""
    assert r.event is not None
    decisions = r.event["triage"]
    warnings = [w for w in r.event["warnings"] if w["reason"] == "triage-failed"]
    if not decisions:
        detail = warnings[0]["detail"] if warnings else "no triage result"
        return {"triage_text": f"no decision ({detail}); triage is advisory, the series was enhanced anyway",
                "triage_probabilities": {}}
    flagged = sum(d["enhance"] for d in decisions.values())
    middle = decisions.get(str(r.sources[len(r.sources) // 2].SOPInstanceUID))
    names = next(iter(decisions.values()))["probabilities"]
    probabilities = {name: float(np.mean([d["probabilities"][name] for d in decisions.values()])) for name in names}
    text = (f"{flagged} of {len(decisions)} slices flagged for enhancement (advisory: the series is enhanced "
            f"either way); middle slice: {middle['reason'] if middle else 'not triaged'}")
    return {"triage_text": text, "triage_probabilities": probabilities}


def _context_effect(r: StudyRun, engine: InferenceEngine) -> str:
    """What the context changed: the middle slice through the same model with the patient's context and with
    none, compared."""
    from gan import bicubic
    from server import to_model_space

    assert r.event is not None
    context = r.event["context"]
    if context is None:
        return "Enhanced without vitals: no context was available at acquisition time."
    model = engine.settings.enhancer_for("study").name
    plane = to_model_space(r.sources[len(r.sources) // 2]).frames[0][None].astype(np.float32)
    with_context = engine.enhance(plane, np.asarray(context["vector"], np.float32), model=model)
    without = engine.enhance(plane, None, model=model)
    base = bicubic(plane, with_context.scale)
    correction = float(np.mean(np.abs(with_context.images - base)))
    change = float(np.mean(np.abs(with_context.images - without.images)))
    share = change / correction if correction > 0 else 0.0
    strength = ("" if with_context.strength is None else
                f" Strength α: {with_context.strength:.3f} with these vitals, {without.strength:.3f} without.")
    return (f"What the context did (measured on the middle slice, same model without vitals): the output changes by "
            f"{change:.4f} on average (model units, 0–1), {share:.0%} of the model's own correction (mean "
            f"|output − bicubic| = {correction:.4f}).{strength}")


def analyse(r: StudyRun, engine: InferenceEngine, workdir: Path) -> dict[str, Any]:
    """Everything the report says about one study (``images``: the PNGs, for the caller to embed)."""
    first = r.sources[0]
    event = r.event or {}
    out = r.derived[0] if r.derived else None
    info: dict[str, Any] = {
        "label": r.study.label, "description": r.study.description, "patient": r.patient,
        "route": r.study.route, "route_text": ROUTES[r.study.route],
        "study_uid": str(first.StudyInstanceUID), "source_series_uid": str(first.SeriesInstanceUID),
        "slices": len(r.sources), "matrix": f"{first.Rows}×{first.Columns}", "spacing_mm": _spacing(first),
        "thickness_mm": f"{float(first.SliceThickness):.3g}", "acquired_at": r.acquired.isoformat(timespec="seconds"),
        "status": event.get("status", "no result event"), "model": event.get("model"),
        "model_version": event.get("model_version"), "scale": event.get("scale"),
        "derived_series_uid": event.get("derived_series_uid"),
        "derived_sop_instance_uids": sorted(str(d.SOPInstanceUID) for d in r.derived),
        "derived_count": len(r.derived), "derived_matrix": f"{out.Rows}×{out.Columns}" if out else "–",
        "derived_spacing_mm": _spacing(out) if out else "–", "in_orthanc": r.in_pacs,
        "pacs_text": ("Orthanc: fetched back by WADO-RS, found by QIDO-RS" if r.in_pacs
                      else "not in a PACS (Orthanc skipped): kept by the demo"),
        "dciodvfy": r.info.get("dciodvfy", "–"), "files": r.info.get("files"),
        "processing_s": round(r.done_s, 1), "context": event.get("context"),
    }  # fmt: skip
    strength = event.get("strength")
    info["strength_text"] = (
        "α per pixel (the quality model's gated conditioning: set by the image and the context together, so no "
        "single value; see what the context did below)" if strength is None
        else f"mean α = {strength:.3f} (1 = unconditioned)")
    context = info["context"]
    info["missing_channels"] = [] if context is None else [k for k, v in context["levels"].items() if v is None]
    if context is None:
        info["context_line"] = "none (no vitals at acquisition time)"
    else:
        levels = ", ".join(f"{k} {v:.3g}" for k, v in context["levels"].items() if v is not None)
        info["context_line"] = (f"at {context['at']}, completeness {context['completeness']:.0%}: {levels}; "
                                f"missing: {', '.join(info['missing_channels']) or 'none'}")
    if r.event is None:
        info |= {"triage_text": "no result event", "triage_probabilities": {}, "context_effect_text": "",
                 "images": {}, "pictures": {}, "picture_text": ""}
        return info
    info |= _triage(r)
    info["context_effect_text"] = _context_effect(r, engine)
    images = pictures(r, workdir)
    info["images"] = images
    info["pictures"] = {name: str(path) for name, path in images.items()}
    info["picture_text"] = (
        f"Middle slice. Before: the source slice, bicubic-upsampled to the output size ({info['derived_matrix']}); "
        "after: the derived slice as the PACS returned it. Same window for both "
        + ("(lung, −600/1500 HU)." if r.study.modality == "CT" else "(the source's minimum to its 99.5th percentile)."))
    return info
