"""Study latency: a 20-slice 256 × 256 MR study from arrival at Aegle to its derived series complete in Orthanc.

Real processes: Orthanc with its DICOMweb plugin, and ``aegle serve`` (a child process, so that its memory and
CPU are its own) with the shipped weights (``gan/weights/enhancer-x2``, ``gan/weights/triage-classifier``; a
missing model is reported, and the study then fails to derive). The study is real MR: 20 consecutive axial
slices of pyradiomics 3.0.1's T1 brain MR ``brain1`` (256 × 256, 0.78 mm pixels, 6.5 mm apart; stored values
0…3057, kept as 12-bit unsigned), written as MR Image Storage instances on the header of pydicom-data's
``MR2_UNCR.dcm`` (a real Philips MR header) with new Study/Series/SOP/Frame-of-Reference UIDs, the bench
patient ``bench-brain1``, the slice geometry of the volume and acquisition time "now". Every run is a new study.

Arrival: the STOW-RS POST to Aegle's ``/dicom-web/studies`` starts (the body is encoded before). Two clocks:
``response`` when Aegle's answer arrives (it answers after its own STOW to Orthanc returned), and ``orthanc``
when a QIDO-RS poller (every 20 ms, another thread) first sees all 20 derived instances in the study in Orthanc.
``p50_s``/``p95_s`` are the Orthanc clock. The per-stage split comes from the service's ``/metrics`` around each
run: backend time of the triage classifier and of the enhancer, and the rest of the STOW handler (DICOM parsing,
context look-up, derived-series building, encoding, the STOW-RS to Orthanc, audit, queue waits), which the
service does not break down further. One unmeasured warm-up study runs first.

Orthanc binds every interface, so the bench re-executes itself under ``unshare -n`` (loopback only) when needed.

    python -m bench.study_latency              # 10 studies
    python -m bench.study_latency --quick      # 3 studies (under a minute once the ONNX cache exists)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from aegle import Orthanc
from bench._service import (
    BRAIN_MR,
    AegleService,
    brain_mr,
    metric_delta,
    missing_models,
    percentile,
    run_isolated,
)
from bench.ingest import cpu_seconds
from server import encode_instance, encode_multipart

SLICES = 20
TEMPLATE = "MR2_UNCR.dcm"  # pydicom-data: a real Philips MR Image Storage header
PATIENT_ID = "bench-brain1"
STOW_ROUTE = "/dicom-web/studies"
GOAL_P50_S = 3.0
POLL_S = 0.02  # QIDO-RS poll interval: the resolution of the Orthanc clock


def mr_template() -> Dataset:
    """The header of pydicom-data's ``MR2_UNCR.dcm`` without its pixels, trailing padding and Modality LUT
    (the MR IOD has none: the study's stored values are the MR signal)."""
    import data_store  # pydicom-data

    ds = pydicom.dcmread(Path(data_store.__file__).parent / "data" / TEMPLATE)
    for keyword in ("PixelData", "RescaleIntercept", "RescaleSlope", "RescaleType"):
        del ds[keyword]
    del ds[0xFFFC, 0xFFFC]  # Data Set Trailing Padding
    return ds


def mr_study(template: Dataset, volume: np.ndarray, spacing: tuple[float, ...]) -> list[Dataset]:
    """``SLICES`` consecutive central slices of ``volume`` as one new MR series of a new study (see module doc)."""
    dz, dy, dx = spacing
    first = (volume.shape[0] - SLICES) // 2
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    now = datetime.now(UTC)
    date, clock = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    rows, cols = volume.shape[1:]
    series = []
    for k in range(SLICES):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^BrainMR", PATIENT_ID, "", "O"
        ds.StudyID, ds.AccessionNumber, ds.StudyDescription = "bench", "", "BRAIN (Aegle benchmark)"
        ds.BodyPartExamined = "BRAIN"  # unpaired: no Laterality
        ds.SeriesDescription = ds.ProtocolName = f"T1 axial, {BRAIN_MR}"
        ds.ImageComments = f"pixels: pyradiomics 3.0.1 {BRAIN_MR} slice {first + k}; header: pydicom-data {TEMPLATE}"
        for prefix in ("Study", "Series", "Acquisition", "Content", "InstanceCreation"):
            setattr(ds, f"{prefix}Date", date)
            setattr(ds, f"{prefix}Time", clock)
        ds.TimezoneOffsetFromUTC = "+0000"
        ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = 1, 1, k + 1
        z = round((first + k) * dz, 4)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [round(-cols * dx / 2, 4), round(-rows * dy / 2, 4), z]
        ds.SliceLocation, ds.SliceThickness, ds.SpacingBetweenSlices = z, round(dz, 4), round(dz, 4)
        ds.Rows, ds.Columns, ds.PixelSpacing = rows, cols, [round(dy, 6), round(dx, 6)]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 1200, 2400
        ds.PixelData = np.ascontiguousarray(volume[first + k]).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        series.append(ds)
    return series


class OrthancWatch:
    """Polls Orthanc's QIDO-RS for the instances of one study; records when ``SLICES`` of them are first there."""

    def __init__(self, pacs: Orthanc, study_uid: str) -> None:
        self.url = f"{pacs.dicomweb_url}/studies/{study_uid}/instances"
        self.client = httpx.Client(auth=pacs.auth, timeout=10)
        self.seen_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def count(self) -> int:
        answer = self.client.get(self.url, headers={"Accept": "application/dicom+json"})
        if answer.status_code in (204, 404) or not answer.content:
            return 0
        answer.raise_for_status()
        return len(answer.json())

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                if self.count() >= SLICES:
                    self.seen_at = time.perf_counter()
                    return
            except httpx.HTTPError as exc:  # Orthanc busy or restarting: keep watching; an error ends in the log
                print(f"QIDO-RS poll failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.stop.wait(POLL_S)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.client.close()


def derived_instances(pacs: Orthanc, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
    """QIDO-RS instances of the derived series, with Rows and Columns."""
    answer = httpx.get(f"{pacs.dicomweb_url}/studies/{study_uid}/series/{series_uid}/instances", auth=pacs.auth,
                       params=[("includefield", "00280010"), ("includefield", "00280011")],
                       headers={"Accept": "application/dicom+json"}, timeout=30)  # fmt: skip
    if answer.status_code in (204, 404) or not answer.content:
        return []
    answer.raise_for_status()
    return answer.json()


def one_study(client: httpx.Client, service: AegleService, pacs: Orthanc, study: list[Dataset]) -> dict[str, Any]:
    """Send one study to Aegle by STOW-RS and time it on both clocks; stage times and CPU from around it."""
    boundary = generate_uid().replace(".", "")
    body = encode_multipart([encode_instance(ds) for ds in study], boundary)
    headers = service.auth("device") | {"Content-Type": f'multipart/related; type="application/dicom"; '
                                                        f"boundary={boundary}"}  # fmt: skip
    study_uid = str(study[0].StudyInstanceUID)
    before = service.metrics()
    cpu0 = {"service": service.cpu_seconds(), "orthanc": cpu_seconds(pacs.process.pid),  # type: ignore[union-attr]
            "bench": time.process_time()}  # fmt: skip
    watch = OrthancWatch(pacs, study_uid)
    started = time.perf_counter()
    watch.thread.start()
    answer = client.post(f"{service.url}{STOW_ROUTE}", content=body, headers=headers)
    responded = time.perf_counter()
    watch.thread.join(60)
    watch.close()
    cpu = {"service": service.cpu_seconds() - cpu0["service"],
           "orthanc": cpu_seconds(pacs.process.pid) - cpu0["orthanc"],  # type: ignore[union-attr]
           "bench": time.process_time() - cpu0["bench"]}  # fmt: skip
    after = service.metrics()
    result = json.loads(answer.headers.get("X-Aegle-Result", '{"series": []}'))["series"]
    series = result[0] if result else {}
    derived_uid = series.get("derived_series_uid")
    instances = derived_instances(pacs, study_uid, derived_uid) if derived_uid else []
    triage = metric_delta(before, after, "aegle_inference_seconds_sum", model="triage-classifier")
    model = series.get("model")  # the study path's enhancer (the quality model by default)
    enhance = metric_delta(before, after, "aegle_inference_seconds_sum", model=model) if model else 0.0
    handler = metric_delta(before, after, "aegle_api_request_seconds_sum", route=STOW_ROUTE, method="POST")
    return {
        "status": answer.status_code,
        "series_status": series.get("status"),
        "failures": [f.get("reason") for f in series.get("failures", [])],
        "warnings": [f.get("reason") for f in series.get("warnings", [])],
        "response_s": responded - started,
        "orthanc_s": None if watch.seen_at is None else watch.seen_at - started,
        "derived_instances": len(instances),
        "derived_matrix": sorted({(i["00280010"]["Value"][0], i["00280011"]["Value"][0]) for i in instances}),
        "stages_s": {"triage": triage, "enhance": enhance, "rest_of_handler": handler - triage - enhance,
                     "handler": handler},
        "cpu_s": cpu,
    }


def median_of(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    return {name: round(statistics.median(r[key][name] for r in runs), 4) for name in runs[0][key]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 studies")
    parser.add_argument("--runs", type=int, default=None, help="timed studies (default 10, 3 with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads of the service (default: the service's default, all cores)")
    parser.add_argument("--weights", default=None, help="registry root (default: the shipped gan/weights)")
    parser.add_argument("--cache-dir", default="var/model-cache", help="ONNX cache of the service")
    args = parser.parse_args()
    network = run_isolated("bench.study_latency")
    runs = args.runs or (3 if args.quick else 10)
    load_before = os.getloadavg()[0]
    template = mr_template()
    volume, spacing = brain_mr(BRAIN_MR)[BRAIN_MR]
    inference: dict[str, Any] = {"cache_dir": args.cache_dir}
    if args.threads:
        inference["threads"] = args.threads
    if args.weights:
        inference["weights_dir"] = args.weights
    with tempfile.TemporaryDirectory(prefix="aegle-bench-") as tmp, Orthanc(Path(tmp) / "orthanc") as pacs:
        service = AegleService(Path(tmp) / "service", inference=inference, pacs=pacs)
        t0 = time.perf_counter()
        with service, httpx.Client(timeout=300) as client:
            startup_s = time.perf_counter() - t0
            models = service.models()
            results = []
            for i in range(1 + runs):  # the first study warms the service up and is not counted
                outcome = one_study(client, service, pacs, mr_study(template, volume, spacing))
                label = "warm-up" if i == 0 else f"study {i}/{runs}"
                seen = outcome["orthanc_s"] or float("nan")
                print(f"{label}: HTTP {outcome['status']}, {outcome['derived_instances']} derived instances, "
                      f"response {outcome['response_s']:.2f} s, in Orthanc {seen:.2f} s", file=sys.stderr)
                if i:
                    results.append(outcome)
            memory = service.memory_mb()
    complete = [r for r in results if r["derived_instances"] == SLICES and r["orthanc_s"] is not None]
    seen = [r["orthanc_s"] for r in complete]
    responses = [r["response_s"] for r in results]
    p50 = round(statistics.median(seen), 3) if seen else None
    missing = missing_models(models)
    print(json.dumps({
        "bench": "study_latency",
        "study": {"slices": SLICES, "matrix": list(volume.shape[1:]), "source": f"pyradiomics 3.0.1 {BRAIN_MR}",
                  "header_template": f"pydicom-data {TEMPLATE}", "transfer": "STOW-RS to Aegle, multipart"},
        "runs": runs, "warmup_runs": 1,
        # Arrival (the POST starts) → the derived series' 20 instances seen in Orthanc by QIDO-RS.
        "p50_s": p50,
        "p95_s": round(percentile(seen, 95), 3) if seen else None,
        # Arrival → Aegle's STOW-RS answer (it answers after its STOW-RS to Orthanc returned).
        "response_p50_s": round(statistics.median(responses), 3),
        "response_p95_s": round(percentile(responses, 95), 3),
        "goal_p50_s": GOAL_P50_S, "goal_met": p50 is not None and p50 <= GOAL_P50_S,
        "complete_runs": len(complete),
        "derived_instances": [r["derived_instances"] for r in results],
        "derived_matrix": sorted({tuple(m) for r in results for m in r["derived_matrix"]}),
        "http_status": [r["status"] for r in results],
        "failures": sorted({f for r in results for f in r["failures"]}),
        # Done anyway, but degraded (the pipeline's warnings: e.g. triage-failed when the classifier is missing).
        "warnings": sorted({w for r in results for w in r["warnings"]}),
        "runs_s": [None if r["orthanc_s"] is None else round(r["orthanc_s"], 3) for r in results],
        "runs_response_s": [round(s, 3) for s in responses],
        # Medians over the runs, from the service's /metrics: backend time per model; the rest of the handler.
        "stages_p50_s": median_of(results, "stages_s"),
        # CPU seconds per study (median): the service, Orthanc, this process (client + QIDO poller).
        "cpu_s_per_study_p50": median_of(results, "cpu_s"),
        "rss_mb": memory["VmHWM"], "rss_now_mb": memory["VmRSS"],
        "service_startup_s": round(startup_s, 2),
        "models": {m["name"]: {"version": m["version"], "backend": m["backend"]} for m in models.get("models", [])},
        "missing_models": missing,
        "threads": args.threads,
        "network": network,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
