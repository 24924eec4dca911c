"""``aegle enhance``: DICOM, PNG and NPY files enhanced on this machine, without a server.

The inference engine is built in-process from the settings (:class:`server.InferenceEngine`), with only the models
the inputs need. DICOM files — given one by one, as folders, or through a DICOMDIR — are grouped by series and go
through the server's own study path (:func:`server.build_pipeline` with no PACS and no result events): each
instance read and checked, the patient's context at the series' acquisition time, triage (advisory), the study
path's enhancer, the derived series by the rules of docs/dicom.md §3. The derived instances are written to
``OUT/<derived series UID>/<SOP instance UID>.dcm``. PNG and NPY files go through the live path's enhancer, as
``POST /api/v1/enhance`` does, and come back in their own format and dtype (``OUT/<name>.enhanced.png|npy``).
Every enhanced input also gets two pictures for a person, ``….before.png`` and ``….after.png``.

The context: by default the patient's stored vitals at each series' acquisition time, from the configured store
(as the server does; a store that does not exist is never created: the files are enhanced without vitals, and
the summary says so); ``--vitals hr=72,rr=16,motion=0.4`` gives the vitals instead (they stand for measurements
at the acquisition time); ``--no-context`` enhances without any. PNG and NPY carry no patient or time: they use
``--vitals``, or ``--patient`` (with ``--at``, default now) to read the store.

Bad files are reported with a reason (never a header value) and skipped; the exit status is 1 when any input
failed. Progress goes to stderr: a bar on a terminal, one line per input otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from aegle.stores import CHANNEL_SIGNS, StoreMissing, describe, open_existing
from core import CHANNELS, InferenceSettings, Sample, SampleReader, SensorContext, Settings, context_at

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from server import InferenceEngine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
#: File names a folder walk takes as images even when their first bytes do not say so (they fail with a reason).
IMAGE_SUFFIXES = frozenset({".dcm", ".dicom", ".ima", ".png", ".npy", ""})
#: ``--vitals`` names: a short name, or the context channel itself (core.context.CHANNELS).
VITALS_NAMES: dict[str, str] = {
    "hr": "heart_rate", "spo2": "spo2", "temp": "temperature", "rr": "respiratory_rate", "sbp": "systolic_bp",
    "dbp": "diastolic_bp", "motion": "motion", **{channel: channel for channel in CHANNELS},
}  # fmt: skip


def parse_vitals(text: str) -> dict[str, float]:
    """``hr=72,rr=16,motion=0.4`` → ``{"heart_rate": 72.0, …}``; an unknown name, a repeated one, a value that is
    not a number or is physiologically impossible (the vitals message's ranges) is refused with the reason."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        channel = VITALS_NAMES.get(name.strip().lower())
        if not sep or channel is None:
            known = ", ".join(k for k, v in VITALS_NAMES.items() if k != v)
            raise argparse.ArgumentTypeError(f"unknown vital {name.strip()!r} (known: {known})")
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name.strip()}={raw!r} is not a number") from None
        sign = CHANNEL_SIGNS[channel]
        if not math.isfinite(value) or not sign.low <= value <= sign.high:
            raise argparse.ArgumentTypeError(
                f"{name.strip()}={raw} is outside the possible range {sign.low:g}–{sign.high:g} {sign.unit}"
            )
        if channel in values:
            raise argparse.ArgumentTypeError(f"{channel} is given twice")
        values[channel] = value
    if not values:
        raise argparse.ArgumentTypeError("no vitals given (e.g. hr=72,rr=16,motion=0.4)")
    return values


@dataclass(frozen=True)
class GivenVitals:
    """A vitals reader holding one measurement per given channel at the end of every window asked for: the context
    is then computed as for stored vitals, at the series' acquisition time."""

    values: dict[str, float]

    def query(self, patient_id: str, start_ms: int, end_ms: int) -> list[Sample]:
        return [Sample(patient_id, "cli", "aegle-enhance", CHANNEL_SIGNS[c].code, end_ms, v, f"cli-{c}")
                for c, v in self.values.items()]  # fmt: skip


class NoVitals:
    """A vitals reader with nothing in it: every channel missing (the model's all-missing input)."""

    def query(self, patient_id: str, start_ms: int, end_ms: int) -> list[Sample]:
        return []


@dataclass
class Item:
    """One input file and what became of it."""

    path: Path
    kind: str  # dicom, png, npy, or unknown
    status: str = "pending"  # ok, failed, skipped
    reason: str | None = None
    detail: str | None = None
    outputs: list[str] = field(default_factory=list)
    sop_instance_uid: str | None = None

    def fail(self, reason: str, detail: str) -> None:
        self.status, self.reason, self.detail = "failed", reason, detail

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "status": self.status, "reason": self.reason,
                "detail": self.detail, "outputs": self.outputs}  # fmt: skip


def sniff(path: Path) -> str:
    """``dicom``, ``png`` or ``npy`` by the file's first bytes, else by its suffix; ``unknown`` otherwise."""
    with path.open("rb") as f:
        head = f.read(132)
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head[128:132] == b"DICM":
        return "dicom"
    return {".png": "png", ".npy": "npy", ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom"}.get(
        path.suffix.lower(), "unknown")


def collect(paths: Sequence[Path]) -> tuple[list[Item], list[Path]]:
    """The input files of ``paths`` (files, folders walked recursively, DICOMDIRs), each once, and the files a
    folder walk ignored (neither an image by content nor by name; hidden files and DICOMDIRs, whose files the walk
    finds itself, are not listed)."""
    items: dict[Path, Item] = {}
    ignored: list[Path] = []

    def add(path: Path, kind: str | None = None) -> None:
        key = path.resolve()
        if key not in items:
            items[key] = Item(path, kind or sniff(path))

    for path in paths:
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                hidden = any(part.startswith(".") for part in found.relative_to(path).parts)
                if hidden or found.name.upper() == "DICOMDIR":
                    continue
                kind = sniff(found)
                if kind == "unknown" and found.suffix.lower() not in IMAGE_SUFFIXES:
                    ignored.append(found)
                else:
                    add(found, "dicom" if kind == "unknown" else kind)
        elif path.name.upper() == "DICOMDIR" and path.is_file():
            try:
                referenced = dicomdir_files(path)
            except Exception as exc:  # pydicom raises many types for a broken directory
                items[path.resolve()] = Item(path, "dicomdir", "failed", "bad-dicomdir", type(exc).__name__)
                continue
            for found in referenced:
                if found.is_file():
                    add(found, "dicom")
                else:
                    items[found.resolve()] = Item(found, "dicom", "failed", "not-found", "named by the DICOMDIR")
        elif path.is_file():
            add(path)
        else:
            items[path.resolve()] = Item(path, "unknown", "failed", "not-found", "no such file or folder")
    return list(items.values()), ignored


def dicomdir_files(path: Path) -> list[Path]:
    """The files a DICOMDIR references (pydicom's File-set reader)."""
    from pydicom.fileset import FileSet

    return [Path(instance.path) for instance in FileSet(path)]


class Progress:
    """Progress on ``stream``: a bar redrawn in place on a terminal, else one plain line per step."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def advance(self, items: Sequence[Item]) -> None:
        """Count ``items`` as done."""
        self.done += len(items)
        if self.tty:
            filled = round(30 * self.done / max(self.total, 1))
            name = items[-1].path.name[:40] if items else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {name:<40}")
        else:
            for item in items:
                self.stream.write(f"enhance: {item.path}: {item.status}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------------- pictures


def _picture(unit: np.ndarray) -> np.ndarray:
    """[0, 1] values (grey H×W or RGB H×W×3) as 8-bit pixels."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _middle_frame(ds: Dataset) -> np.ndarray:
    pixels = np.asarray(ds.pixel_array)
    grey = int(ds.SamplesPerPixel) == 1
    return pixels[len(pixels) // 2] if pixels.ndim == (3 if grey else 4) else pixels


def _display_range(ds: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The source's own window (first WindowCenter/WindowWidth), else its 0.5–99.5 percentile range."""
    try:
        center, width = (float(np.ravel([ds.WindowCenter])[0]), float(np.ravel([ds.WindowWidth])[0]))
        if width > 1 and math.isfinite(center):
            return center - width / 2, center + width / 2
    except (AttributeError, TypeError, ValueError):
        pass
    lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    return lo, (hi if hi > lo else lo + 1.0)


def before_after(source: Dataset, derived: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The middle frame of a source instance and of its derived instance as 8-bit pictures, both shown the same
    way: through their own modality LUT (rescale), in the source's window, MONOCHROME1 inverted; RGB as stored."""
    from pydicom.pixels import apply_modality_lut

    before, after = _middle_frame(source), _middle_frame(derived)
    if int(source.SamplesPerPixel) == 3:
        full = float((1 << int(source.BitsStored)) - 1)
        return _picture(before / full), _picture(after / full)
    before = apply_modality_lut(before, source).astype(np.float64)
    after = apply_modality_lut(after, derived).astype(np.float64)
    lo, hi = _display_range(source, before)
    invert = str(source.PhotometricInterpretation).strip() == "MONOCHROME1"

    def shown(values: np.ndarray) -> np.ndarray:
        unit = (values - lo) / (hi - lo)
        return _picture(1.0 - unit if invert else unit)

    return shown(before), shown(after)


def _save_png(pixels: np.ndarray, path: Path) -> str:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")
    return str(path)


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class Context:
    """Where the context comes from: ``reader`` gives the vitals (stored, given, or none) and ``source`` says which
    for the summary; ``patient`` / ``at``: whose context at what time PNG and NPY files get (None: none)."""

    reader: SampleReader
    source: str
    patient: str | None = None
    at: datetime | None = None
    note: str | None = None

    def for_plain(self, settings: Settings) -> SensorContext | None:
        """The context of a PNG or NPY file (no header: ``--vitals`` now, or ``--patient`` at ``--at``)."""
        if self.patient is None:
            return None
        window = settings.context
        return context_at(self.reader, self.patient, self.at or datetime.now(UTC), window.window_s,
                          window.freshness_tau_s)  # fmt: skip


@dataclass
class Run:
    """One ``aegle enhance`` run: inputs, the engine, the outputs written, the series results."""

    settings: Settings
    out: Path
    context: Context
    items: list[Item]
    ignored: list[Path]
    series: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # input kind → "name version"
    stems: set[str] = field(default_factory=set)  # output names of PNG and NPY inputs so far

    def enhance(self, engine: InferenceEngine, progress: Progress) -> None:
        """Every DICOM series, then every PNG and NPY file; failures recorded on their items."""
        dicom = [item for item in self.items if item.kind == "dicom" and item.status == "pending"]
        for group in _series_groups(dicom):
            self._dicom_series(engine, group)
            progress.advance(group)
        for item in self.items:
            if item.kind in ("png", "npy") and item.status == "pending":
                self._plain(engine, item)
                progress.advance([item])
        for item in self.items:
            if item.status == "pending":
                item.fail("unsupported-format", "not a DICOM, PNG or NPY file (by its first bytes and its name)")
                progress.advance([item])

    def _dicom_series(self, engine: InferenceEngine, group: list[Item]) -> None:
        from pydicom import dcmread

        from server import build_pipeline, encode_instance

        data, readable = [], []
        for item in group:
            try:
                data.append(item.path.read_bytes())
                readable.append(item)
            except OSError as exc:
                item.fail("unreadable-file", f"{type(exc).__name__}: {exc.strerror}")
        if not readable:
            return
        pipeline = build_pipeline(engine, lambda: self.context.reader, None, None, self.settings)
        result = pipeline.process_series(data)
        by_uid = {item.sop_instance_uid: item for item in readable}
        for ds in result.derived:
            item = by_uid[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
            folder = self.out / str(ds.SeriesInstanceUID)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(encode_instance(ds))
            before, after = before_after(dcmread(item.path), ds)
            item.outputs = [str(path), _save_png(before, path.with_suffix(".before.png")),
                            _save_png(after, path.with_suffix(".after.png"))]  # fmt: skip
            item.status = "ok"
        for item in filter(None, map(by_uid.get, result.skipped)):
            item.status, item.reason, item.detail = "skipped", "aegle-output", "Aegle's own output: not enhanced again"
        # An instance's own failures first; then those naming no instance (the series) for whatever is left.
        for failure in sorted(result.failures, key=lambda f: f.sop_instance_uid not in by_uid):
            owner = by_uid.get(failure.sop_instance_uid)
            for item in [owner] if owner is not None else readable:
                if item.status == "pending":
                    item.fail(failure.reason, failure.detail)
        for item in readable:
            if item.status == "pending":
                item.fail("not-processed", "the study path returned no result for this instance")
        if result.model_name:
            self.models["dicom"] = f"{result.model_name} {result.model_version}"
        self.series.append(result.summary())

    def _plain(self, engine: InferenceEngine, item: Item) -> None:
        from server import ImageInputError, decode_image, encode_image

        model = engine.settings.enhancer_for("live").name
        try:
            if item.path.stat().st_size > self.settings.api.max_upload_bytes:
                raise ImageInputError(413, "too-large", f"the file exceeds {self.settings.api.max_upload_bytes} bytes")
            image = decode_image(item.path.read_bytes(), self.settings.api.max_pixels)  # the API's own rules
            context = self.context.for_plain(self.settings)
            out = engine.enhance(image.planes, None if context is None else context.vector, model=model)
        except ImageInputError as exc:
            item.fail(exc.reason, str(exc))
            return
        except Exception as exc:  # the engine's refusals (too large to tile, a model missing) and store errors
            item.fail("enhance-failed", f"{type(exc).__name__}: {exc}")
            return
        stem, n = item.path.stem, 1
        while stem in self.stems:  # two inputs of one name (other folders, or PNG and NPY): cam, cam-2, …
            n += 1
            stem = f"{item.path.stem}-{n}"
        self.stems.add(stem)
        enhanced = self.out / f"{stem}.enhanced.{item.kind}"
        enhanced.write_bytes(encode_image(image, out.images))
        rgb = (lambda planes: np.moveaxis(planes, 0, -1)) if image.rgb else (lambda planes: planes[0])
        item.outputs = [str(enhanced), _save_png(_picture(rgb(image.planes)), self.out / f"{stem}.before.png"),
                        _save_png(_picture(rgb(out.images)), self.out / f"{stem}.after.png")]  # fmt: skip
        item.status = "ok"
        self.models["plain"] = f"{out.model_name} {out.model_version}"
        self.series.append({"path": str(item.path), "model": out.model_name, "model_version": out.model_version,
                            "strength": out.strength, "scale": out.scale,
                            "context": None if context is None else context.to_dict(patient=False, vector=False)})

    def summary(self) -> dict[str, Any]:
        """The run as one JSON object: counts, context source, models, every file, every series."""
        counts = {s: sum(i.status == s for i in self.items) for s in ("ok", "failed", "skipped")}
        return {"out": str(self.out), "context": self.context.source, "note": self.context.note,
                "models": self.models, "counts": counts | {"ignored": len(self.ignored)},
                "files": [i.to_dict() for i in self.items], "ignored": [str(p) for p in self.ignored],
                "results": self.series}  # fmt: skip


def _series_groups(items: list[Item]) -> Iterator[list[Item]]:
    """DICOM items grouped by SeriesInstanceUID (read from the header alone). A file whose header cannot name its
    series forms a group of its own, so the study path reports its reason; a file repeating a SOP Instance UID
    goes to a later group, so each result names one file."""
    from pydicom import dcmread

    groups: dict[tuple[str, int], list[Item]] = {}
    seen: dict[str, int] = {}
    for item in items:
        try:
            ds = dcmread(item.path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
            series, item.sop_instance_uid = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        except Exception:  # read_instance in the study path says what is wrong
            yield [item]
            continue
        copy = seen[item.sop_instance_uid] = seen.get(item.sop_instance_uid, -1) + 1
        groups.setdefault((series, copy), []).append(item)
    yield from groups.values()


def _context(settings: Settings, args: argparse.Namespace, err: TextIO) -> Context:
    """The context source the options choose (see the module docstring); StoreMissing for ``--patient`` when the
    store does not exist."""
    if args.vitals is not None:
        shown = ", ".join(f"{k} {v:g}" for k, v in args.vitals.items())
        return Context(GivenVitals(args.vitals), f"given: {shown}", patient="", at=args.at)
    if args.no_context:
        return Context(NoVitals(), "none (--no-context)")
    try:
        store = open_existing(settings.store)
    except StoreMissing as exc:
        if args.patient is not None:
            raise
        note = f"{exc}: enhanced without vitals"
        print(f"aegle enhance: {note}", file=err)
        return Context(NoVitals(), "none (no store)", note=note)
    return Context(store, f"{describe(settings.store)}, at each series' acquisition time", args.patient, args.at)


def _roles(engine_settings: InferenceSettings, items: list[Item]) -> list[str]:
    """The engine roles the inputs need: the study path's enhancer and triage for DICOM, the live path's for PNG
    and NPY."""
    kinds = {item.kind for item in items if item.status == "pending"}
    roles = []
    if "dicom" in kinds:
        roles += [engine_settings.enhancer_role("study"), "triage"]
    if kinds & {"png", "npy"}:
        roles.append(engine_settings.enhancer_role("live"))
    return list(dict.fromkeys(roles))


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    """The run for a person: counts, models and context, each result, each failure with its reason."""
    counts = summary["counts"]
    total = counts["ok"] + counts["failed"] + counts["skipped"]
    print(f"enhanced {counts['ok']} of {total} file(s) into {summary['out']}: {counts['failed']} failed, "
          f"{counts['skipped']} skipped, {counts['ignored']} ignored (not images)", file=out)  # fmt: skip
    for kind, model in summary["models"].items():
        print(f"  model ({'DICOM' if kind == 'dicom' else 'PNG/NPY'}): {model}", file=out)
    print(f"  context: {summary['context']}", file=out)
    for result in summary["results"]:
        if result.get("scale") is None:
            continue  # nothing enhanced: the failures below say why
        context = result.get("context")
        used = "no context" if context is None else f"context completeness {context['completeness']:.2f}"
        where = f"series {result['series_uid']}" if "series_uid" in result else result["path"]
        strength = "" if result.get("strength") is None else f", strength {result['strength']:.3g}"
        print(f"  {where}: {result.get('model')} x{result['scale']}{strength}, {used}", file=out)
    for item in summary["files"]:
        if item["status"] == "failed":
            print(f"  FAILED {item['path']}: {item['reason']}: {item['detail']}", file=out)


def run(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``aegle enhance``: 0 when every input was enhanced (or skipped as Aegle's own output), 1 when any failed,
    2 when the options cannot be honoured (``--patient`` with a store that does not exist)."""
    from server import InferenceEngine

    items, ignored = collect(args.paths)
    if not items:
        print("aegle enhance: nothing to enhance (no DICOM, PNG or NPY files in the paths given)", file=err)
        return 1
    try:
        context = _context(settings, args, err)
    except StoreMissing as exc:
        print(f"aegle enhance: --patient needs the vitals store: {exc}", file=err)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    engine = InferenceEngine.from_settings(settings.inference, roles=_roles(settings.inference, items))
    job = Run(settings, args.out, context, items, ignored)
    progress = Progress(sum(i.status == "pending" for i in items), err)
    try:
        job.enhance(engine, progress)
    finally:
        progress.close()
        engine.close()
        close: Callable[[], None] | None = getattr(context.reader, "close", None)
        if close is not None:
            close()
    summary = job.summary()
    if args.json:
        print(json.dumps(summary), file=out)
    else:
        print_summary(summary, out)
    return 1 if summary["counts"]["failed"] else 0
