"""``aegle enhance`` as an operator runs it: real DICOM (files, a folder, a DICOMDIR), PNG and NPY, bad files, the
context from the store, from ``--vitals`` or none — the real command in a subprocess, on a registry of the served
architectures with random-init weights (plumbing, not quality)."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.fileset import FileSet

from core.vitals import Sample, to_ms
from server.store.sqlite import SQLiteStore
from server.study import acquisition_time
from server.study.derived import PRIVATE_CREATOR, PRIVATE_GROUP
from tests.api_support import derived_model, real_slice
from tests.dicom_support import assert_dciodvfy_clean, pydicom_file

PATIENT_NAMES = ("CompressedSamples^CT1", "CompressedSamples^MR1")  # in the headers: never in the output


@pytest.fixture(scope="module")
def env(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Settings for the command: the test registry (its versions), one model cache for the module, one thread."""
    return {
        "AEGLE_INFERENCE__WEIGHTS_DIR": str(model_root),
        "AEGLE_INFERENCE__ENHANCER__VERSION": "0.0.0-test",
        "AEGLE_INFERENCE__QUALITY_ENHANCER__VERSION": "0.0.1-test",
        "AEGLE_INFERENCE__TRIAGE__VERSION": "0.0.0-test",
        "AEGLE_INFERENCE__CACHE_DIR": str(tmp_path_factory.mktemp("model-cache")),
        "AEGLE_INFERENCE__THREADS": "1",
    }


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aegle.cli", "enhance", *args]


def environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AEGLE_")} | env


def enhance(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=300, env=environment(env))


def inputs(folder: Path) -> dict[str, Path]:
    """Real and broken inputs: a CT file, a folder (MR + a truncated copy of the CT + a note), PNG, NPY, an NPY
    whose header declares far more data than the file holds, a text file given by name."""
    series = folder / "series"
    series.mkdir(parents=True)
    shutil.copy(pydicom_file("MR_small.dcm"), series / "mr.dcm")
    ct = pydicom_file("CT_small.dcm").read_bytes()
    (series / "cut.dcm").write_bytes(ct[: len(ct) // 2])
    (series / "notes.txt").write_text("scanned on the night shift")
    camera = (real_slice(64) * 255).round().astype(np.uint8)
    Image.fromarray(camera).save(folder / "camera.png")
    np.save(folder / "slice.npy", real_slice(48))
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (99999, 99999), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    (folder / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64))
    (folder / "readme.txt").write_text("not an image")
    return {"ct": pydicom_file("CT_small.dcm"), "series": series, "png": folder / "camera.png",
            "npy": folder / "slice.npy", "huge": folder / "huge.npy", "text": folder / "readme.txt"}  # fmt: skip


def test_enhance_dicom_png_npy_and_bad_files(env: dict[str, str], tmp_path: Path) -> None:
    paths = inputs(tmp_path / "in")
    store = tmp_path / "vitals.sqlite"  # does not exist: never created, the files are enhanced without vitals
    out = tmp_path / "out"
    done = enhance(*map(str, paths.values()), "--out", str(out), "--json",
                   env=env | {"AEGLE_STORE__SQLITE_PATH": str(store)})  # fmt: skip
    assert done.returncode == 1, done.stderr  # some inputs failed
    summary = json.loads(done.stdout)
    files = {Path(f["path"]).name: f for f in summary["files"]}
    assert {name: (f["status"], f["reason"]) for name, f in files.items()} == {
        "CT_small.dcm": ("ok", None), "mr.dcm": ("ok", None), "cut.dcm": ("failed", "truncated"),
        "camera.png": ("ok", None), "slice.npy": ("ok", None), "huge.npy": ("failed", "absurd-dimensions"),
        "readme.txt": ("failed", "unsupported-format"),
    }  # fmt: skip
    assert summary["counts"] == {"ok": 4, "failed": 3, "skipped": 0, "ignored": 1}
    assert summary["ignored"] == [str(paths["series"] / "notes.txt")]
    assert not store.exists()
    assert "does not exist" in summary["note"] and str(store) in done.stderr
    for name in PATIENT_NAMES:
        assert name not in done.stdout + done.stderr

    # Derived DICOM: the server's rules (docs/dicom.md §3), the study path's model, dciodvfy-clean.
    derived = []
    for name, source_path in (("CT_small.dcm", paths["ct"]), ("mr.dcm", paths["series"] / "mr.dcm")):
        dcm, before, after = map(Path, files[name]["outputs"])
        source, ds = pydicom.dcmread(source_path), pydicom.dcmread(dcm)
        assert dcm.parent == out / str(ds.SeriesInstanceUID) and dcm.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.PatientID == source.PatientID and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "not for diagnostic use" in ds.SeriesDescription
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (ds.Rows, ds.Columns) == (2 * source.Rows, 2 * source.Columns)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([float(v) / 2 for v in source.PixelSpacing])
        assert derived_model(ds) == ("enhancer-x2-quality", "0.0.1-test")  # the study path's operating point
        with Image.open(before) as b, Image.open(after) as a:
            assert b.size == (source.Columns, source.Rows) and a.size == (2 * source.Columns, 2 * source.Rows)
            assert np.asarray(b).std() > 0 and np.asarray(a).std() > 0
        derived.append(ds)
    ct_context = json.loads(derived[0].private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x03].value)
    assert ct_context["completeness"] == 0 and "patient_id" not in ct_context  # no store: all channels missing
    assert_dciodvfy_clean(derived, tmp_path / "dciodvfy")

    # PNG and NPY: the live path's model, back in their own format and dtype, ×2; pictures to look at.
    enhanced_png, before, after = map(Path, files["camera.png"]["outputs"])
    with Image.open(enhanced_png) as im:
        assert im.mode == "L" and im.size == (128, 128)
    enhanced_npy = np.load(files["slice.npy"]["outputs"][0])
    assert enhanced_npy.dtype == np.float32 and enhanced_npy.shape == (96, 96)
    assert enhanced_npy.min() >= 0 and enhanced_npy.max() <= 1
    assert summary["models"] == {"dicom": "enhancer-x2-quality 0.0.1-test", "plain": "enhancer-x2 0.0.0-test"}
    assert files["huge.npy"]["detail"] == "image is 99999×99999 pixels; the limit is 16777216"  # the API's rules

    # The same files once more, as a person reads it: a summary, and progress as plain lines (not a terminal).
    again = enhance(str(paths["ct"]), str(paths["png"]), "--out", str(tmp_path / "out2"), "--no-context", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("enhanced 2 of 2 file(s)") and "context: none (--no-context)" in again.stdout
    assert f"enhance: {paths['ct']}: ok" in again.stderr.splitlines()


def test_enhance_a_dicomdir_and_a_bar_on_a_terminal(env: dict[str, str], tmp_path: Path) -> None:
    """A DICOMDIR's referenced files are found and enhanced series by series; on a terminal, progress is one bar
    redrawn in place."""
    main, terminal = pty.openpty()
    progress = bytearray()

    def read_terminal() -> None:
        try:
            while chunk := os.read(main, 4096):
                progress.extend(chunk)
        except OSError:  # EIO: the child closed the terminal
            pass

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    with subprocess.Popen(command(str(pydicom_file("dicomdirtests/DICOMDIR")), "--out", str(tmp_path),
                                  "--no-context", "--json"),
                          stdout=subprocess.PIPE, stderr=terminal, text=True, env=environment(env)) as process:
        os.close(terminal)
        stdout, _ = process.communicate(timeout=300)
    reader.join(10)
    os.close(main)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout)
    assert done.returncode == 0
    summary = json.loads(done.stdout)
    referenced = [pydicom.dcmread(instance.path, stop_before_pixels=True)
                  for instance in FileSet(pydicom_file("dicomdirtests/DICOMDIR"))]  # fmt: skip
    assert summary["counts"]["ok"] == len(referenced) == 31
    assert len(summary["results"]) == len({ds.SeriesInstanceUID for ds in referenced})  # one result per series
    assert len(list(tmp_path.glob("*/*.dcm"))) == 31
    assert b"\r[" in progress and b"31/31" in progress and b"enhance: " not in progress


def test_enhance_with_the_context_at_acquisition_time_or_given_vitals(env: dict[str, str], tmp_path: Path) -> None:
    ct = pydicom_file("CT_small.dcm")
    source = pydicom.dcmread(ct)
    acquired = acquisition_time(source, UTC)
    assert acquired is not None
    store = tmp_path / "vitals.sqlite"
    with SQLiteStore(store) as vitals:  # calm before the scan, agitated after it: only the first may count
        vitals.write([Sample(source.PatientID, "ward-1", "mon-1", "8867-4", to_ms(acquired - timedelta(seconds=s)),
                             70.0, f"before-{s}") for s in range(0, 120, 10)])  # fmt: skip
        vitals.write([Sample(source.PatientID, "ward-1", "mon-1", "8867-4", to_ms(acquired + timedelta(seconds=s)),
                             150.0, f"after-{s}") for s in range(1, 120, 10)])  # fmt: skip
    stored = enhance(str(ct), "--out", str(tmp_path / "stored"), "--json",
                     env=env | {"AEGLE_STORE__SQLITE_PATH": str(store)})  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    (result,) = json.loads(stored.stdout)["results"]
    assert result["context"]["levels"]["heart_rate"] == 70.0
    assert result["acquired_at"] == acquired.isoformat().replace("+00:00", "Z")

    given = enhance(str(ct), str(tmp_path / "stored"), "--out", str(tmp_path / "given"), "--json",
                    "--vitals", "hr=120,rr=30,motion=2.5", env=env)  # fmt: skip
    summary = json.loads(given.stdout)
    assert given.returncode == 0 and summary["counts"]["skipped"] == 1  # Aegle's own output is not enhanced again
    levels = summary["results"][0]["context"]["levels"]
    assert (levels["heart_rate"], levels["respiratory_rate"], levels["motion"], levels["spo2"]) == (120, 30, 2.5, None)
    (dcm, _, _) = next(f["outputs"] for f in summary["files"] if f["status"] == "ok")
    assert "HR 120, RR 30, motion 2.5" in pydicom.dcmread(dcm).DerivationDescription

    png = tmp_path / "slice.png"
    Image.fromarray((real_slice(32) * 255).astype(np.uint8)).save(png)
    with_patient = enhance(str(png), "--out", str(tmp_path / "patient"), "--json", "--patient", source.PatientID,
                           "--at", acquired.isoformat(), env=env | {"AEGLE_STORE__SQLITE_PATH": str(store)})
    assert with_patient.returncode == 0, with_patient.stderr
    assert json.loads(with_patient.stdout)["results"][0]["context"]["levels"]["heart_rate"] == 70.0

    for vitals, said in (("hr=70,bp=120", "unknown vital 'bp'"), ("hr=fast", "is not a number"),
                         ("hr=900", "outside the possible range 20–350 /min"), ("hr=70,hr=80", "given twice")):
        refused = enhance(str(ct), "--out", str(tmp_path / "refused"), "--vitals", vitals, env=env)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    no_store = enhance(str(png), "--out", str(tmp_path / "refused"), "--patient", "enc-1",
                       env=env | {"AEGLE_STORE__SQLITE_PATH": str(tmp_path / "absent.sqlite")})  # fmt: skip
    assert no_store.returncode == 2 and "absent.sqlite does not exist" in no_store.stderr
    assert not (tmp_path / "absent.sqlite").exists() and not (tmp_path / "refused").exists()
