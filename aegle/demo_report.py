"""The demo's pictures and report: before/after PNGs, inline SVG vitals charts and one self-contained HTML page
(images as ``data:`` URIs, no external resource)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

NOTICE = "Not for diagnostic use: a demonstration with public test data and synthetic patients."
CHART_SIGNS = (("heart_rate", "HR /min"), ("spo2", "SpO2 %"), ("respiratory_rate", "RR /min"),
               ("motion", "motion m/s²"))


def to_grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Modality values as 8-bit grey under ``window`` = (low, high)."""
    lo, hi = window
    scaled = (np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-9)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def save_png(grey: np.ndarray, path: Path) -> None:
    """Write an 8-bit grey image."""
    from PIL import Image

    Image.fromarray(grey).save(path, format="PNG")


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two equal-size grey images next to each other, a white gap between."""
    spacer = np.full((left.shape[0], gap), 255, np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def vitals_svg(series: Mapping[str, Sequence[tuple[float, float]]], start: float, end: float,
               marker: float | None) -> str:
    """Inline SVG: one small panel per vital sign (``series``: key → (seconds, value) points), x from ``start`` to
    ``end`` seconds, a dashed line at ``marker`` (the acquisition time)."""
    width, panel, left = 560, 64, 90
    parts = [f'<svg width="{width}" height="{panel * len(CHART_SIGNS) + 18}" role="img" '
             f'viewBox="0 0 {width} {panel * len(CHART_SIGNS) + 18}">']
    span = max(end - start, 1e-9)

    def x(t: float) -> float:
        return left + (t - start) / span * (width - left - 10)

    for row, (key, title) in enumerate(CHART_SIGNS):
        top = row * panel + 4
        points = series.get(key, [])
        parts.append(f'<text x="4" y="{top + 24}" font-size="12">{html.escape(title)}</text>')
        parts.append(f'<rect x="{left}" y="{top}" width="{width - left - 10}" height="{panel - 12}" '
                     'fill="none" stroke="#ccc"/>')
        if not points:
            parts.append(f'<text x="{left + 8}" y="{top + 28}" font-size="11" fill="#999">no data</text>')
            continue
        values = [v for _, v in points]
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.1, 0.5 if key != "motion" else 0.05)
        lo, hi = lo - pad, hi + pad

        def y(v: float, top: int = top, lo: float = lo, hi: float = hi) -> float:
            return top + (panel - 12) * (1 - (v - lo) / (hi - lo))

        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="#2a6fb0" stroke-width="1.2"/>')
        parts.append(f'<text x="4" y="{top + 40}" font-size="10" fill="#666">{min(values):.3g}–{max(values):.3g}'
                     "</text>")
    if marker is not None and start <= marker <= end:
        parts.append(f'<line x1="{x(marker):.1f}" y1="0" x2="{x(marker):.1f}" y2="{panel * len(CHART_SIGNS)}" '
                     'stroke="#c0392b" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{min(x(marker) + 3, width - 120):.1f}" y="{panel * len(CHART_SIGNS) + 14}" '
                     'font-size="11" fill="#c0392b">acquisition time</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.9em}.notice{background:#fdecea;
border:1px solid #e6a19a;padding:.6em;font-weight:bold}.pair img{image-rendering:pixelated;margin-right:8px}
.muted{color:#666;font-size:.9em}"""


def render_html(summary: Mapping[str, Any], charts: Mapping[str, str], images: Mapping[str, Mapping[str, Path]]) -> str:
    """The report page from the run's summary, the vitals charts per patient (SVG) and the PNGs per study."""
    s = summary
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Aegle demo report</title>",
           f"<style>{_STYLE}</style></head><body>",
           "<h1>Aegle demo report</h1>", f"<p class='notice'>{html.escape(NOTICE)}</p>",
           f"<p class='muted'>Run {html.escape(s['started'])} → {html.escape(s['finished'])} (UTC), "
           f"{s['figures']['total_s']:.0f} s on this machine; everything ran on 127.0.0.1.</p>",
           "<h2>Figures</h2>",
           _table([(k.replace("_", " "), v) for k, v in s["figures"].items()], ("figure", "value")),
           "<h2>Vitals</h2>",
           f"<p>{s['vitals']['patients']} simulated patients × 2 devices (bedside monitor, wearable) published over "
           f"MQTT (authentication and per-device ACL) for {s['vitals']['duration_s']:.0f} s, with dropouts and late, "
           "duplicated and invalid messages; the ingest worker stored them in SQLite. Dead letters by reason: "
           f"{html.escape(str(s['vitals']['dead_letters'] or 'none'))}.</p>"]
    for patient, svg in charts.items():
        out.append(f"<h3>{html.escape(patient)}</h3>{svg}")
    out.append("<h2>Studies</h2>")
    for study in s["studies"]:
        out.append(f"<h3>{html.escape(study['label'])}: {html.escape(study['description'])}</h3>")
        out.append(_table([
            ("patient", study["patient"]), ("arrived by", study["route_text"]),
            ("source", f"{study['slices']} slices {study['matrix']}, pixel spacing {study['spacing_mm']} mm, "
                       f"slice thickness {study['thickness_mm']} mm"),
            ("acquired", study["acquired_at"]), ("result", study["status"]),
            ("model", f"{study['model']} {study['model_version']}, ×{study['scale']}"),
            ("strength", study["strength_text"]),
            ("derived series", f"{study['derived_series_uid']} ({study['derived_count']} instances "
                               f"{study['derived_matrix']}, pixel spacing {study['derived_spacing_mm']} mm)"),
            ("in the PACS", study["pacs_text"]), ("dciodvfy", study["dciodvfy"]),
        ], ("", "")))
        pictures = images.get(study["label"], {})
        if pictures:
            out.append("<div class='pair'>" + "".join(
                f"<figure style='display:inline-block'><img alt='{html.escape(name)}' src='{data_uri(path)}'>"
                f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, path in pictures.items()) + "</div>")
            out.append(f"<p class='muted'>{html.escape(study['picture_text'])}</p>")
        ctx = study["context"]
        out.append("<h4>Context used</h4>")
        if ctx is None:
            out.append("<p>None: enhanced without vitals.</p>")
        else:
            rows = [(k, "missing" if v is None else f"{v:.4g}",
                     "" if ctx["ages_s"].get(k) is None else f"{ctx['ages_s'][k]:.0f} s")
                    for k, v in ctx["levels"].items()]
            out.append(f"<p>Context at {html.escape(ctx['at'])}, window {ctx['window_s']:.0f} s, completeness "
                       f"{ctx['completeness']:.0%}; missing channels: "
                       f"{html.escape(', '.join(study['missing_channels']) or 'none')}.</p>")
            out.append(_table(rows, ("channel", "level", "age at acquisition")))
        out.append(f"<p>{html.escape(study['context_effect_text'])}</p>")
        out.append("<h4>Triage (advisory)</h4>")
        out.append(f"<p>{html.escape(study['triage_text'])}</p>")
        if study["triage_probabilities"]:
            out.append(_table([(k, f"{v:.3f}") for k, v in study["triage_probabilities"].items()],
                              ("class", "mean probability over the slices")))
    out.append("<h2>Where things are</h2>")
    out.append(_table([(k, v) for k, v in s["paths"].items()], ("", "")))
    out.append(f"<p class='notice'>{html.escape(NOTICE)}</p></body></html>")
    return "".join(out)


def chart_series(samples: Sequence[Any], start: datetime) -> dict[str, list[tuple[float, float]]]:
    """Stored samples (``core.vitals.Sample``) as key → (seconds after ``start``, value), in time order."""
    from core import BY_CODE

    t0 = start.timestamp() * 1000
    out: dict[str, list[tuple[float, float]]] = {}
    for sample in sorted(samples, key=lambda s: s.t_ms):
        sign = BY_CODE.get(sample.code)
        if sign is not None:
            out.setdefault(sign.key, []).append(((sample.t_ms - t0) / 1000, float(sample.value)))
    return out
