"""Container images and the single-box stack: build, image sizes, start-up time, stack up, live smoke test.

Real podman, real images (``deploy/build``: a Debian base made with mmdebstrap, Aegle, Mosquitto, Orthanc,
VictoriaMetrics), the real stack (``deploy/stack/up``: ``podman kube play`` of ``deploy/stack/aegle-stack.yaml``).
The stack shares its network namespace with the caller and Orthanc binds every interface, so everything after the
build runs under ``unshare --net`` with only loopback up (the bench re-executes itself there).

What is measured:

* ``build_s``: ``deploy/build`` wall time (cold with ``--cold``: images, base and build cache removed first; else
  whatever is cached). Not run with ``--quick`` (the images must exist).
* ``serve_image_mb`` and ``images_mb``: each image's size as podman reports it (uncompressed, all layers).
* ``start_s``: ``podman run`` of the Aegle image's ``serve`` (read-only root filesystem, nothing configured) until
  ``/readyz`` reports the served models loaded (from the ONNX files baked into the image: nothing is exported at
  start); then the image's own health check runs (``healthcheck_ok``).
* ``stack_up_s``: ``deploy/stack/up`` until the server's ``/readyz`` is 200 (models, broker, store, PACS), both
  ingest workers serve metrics and the edge node accepts associations.
* the smoke test (``smoke_s``): vitals published over MQTT as a registered bedside monitor (the broker's
  per-device grants) reach the store through the ingest workers and come back from the API; a real CT
  (pydicom's ``CT_small``) is sent by STOW-RS to the server and a real 7-slice MR (pydicom's ``MR700``) by C-STORE
  to the edge node, both with new UIDs, for the same patient, acquired now; each derived series is fetched back
  from Orthanc over WADO-RS and checked (one derived instance per source, twice the rows and columns, DERIVED,
  referencing its source, the patient's context with the published heart rate in its private block). Then the
  stack is stopped and the bench checks that no container is left.

    python -m bench.images              # build (cached layers reused), sizes, start-up, stack, smoke
    python -m bench.images --cold       # the same from nothing: base, layers and images removed first
    python -m bench.images --quick      # no build: sizes, start-up, stack, smoke (images from deploy/build)

The last line of stdout is one JSON object (``serve_image_mb``, ``start_s``, ``stack_up_s``, ``smoke``, …).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TAG = os.environ.get("AEGLE_IMAGE_TAG", "0.1.0")
IMAGES = ("aegle", "aegle-mosquitto", "aegle-orthanc", "aegle-victoria-metrics")
BASE = "localhost/aegle-base:bookworm"
STATE = ROOT / "var" / "deploy" / "stack"
SITE, DEVICE = "ward-1", "monitor-01"
HEART_RATE = 72.0
START_PORT = 18400


def podman_env() -> dict[str, str]:
    """The environment podman runs with here: ``deploy/containers.conf`` (runc, ulimits) unless one is set."""
    conf = os.environ.get("CONTAINERS_CONF", str(ROOT / "deploy" / "containers.conf"))
    return {**os.environ, "CONTAINERS_CONF": conf}


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` and return its result (raise with its output if ``check`` and it failed)."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def unavailable_reason() -> str | None:
    """Why podman cannot run here (None: it can)."""
    if shutil.which("podman") is None:
        return "podman not installed (apt-get install podman buildah mmdebstrap runc)"
    if os.geteuid() != 0:
        return "the stack needs root (rootful podman, unshare --net)"
    return None


def missing_images() -> list[str]:
    """The images ``deploy/build`` makes that are not in local storage."""
    return [i for i in IMAGES if podman("image", "exists", f"localhost/{i}:{TAG}", check=False).returncode != 0]


def image_sizes() -> dict[str, float]:
    """Each image's size in MB (10⁶ bytes, uncompressed, as ``podman images`` reports)."""
    sizes = {}
    for image in IMAGES:
        out = podman("image", "inspect", "--format", "{{.Size}}", f"localhost/{image}:{TAG}").stdout
        sizes[image] = round(int(out.strip()) / 1e6, 1)
    return sizes


def build(cold: bool) -> float:
    """Run ``deploy/build`` (after removing images, base and cache with ``cold``); its wall time in seconds."""
    if cold:
        podman("pod", "rm", "--force", "--ignore", "aegle", check=False)
        podman("rmi", "--force", "--ignore", *(f"localhost/{i}:{TAG}" for i in IMAGES), BASE, check=False)
        podman("image", "prune", "--all", "--force", check=False, timeout=900)
    started = time.monotonic()
    subprocess.run([str(ROOT / "deploy" / "build")], check=True, env=podman_env(), timeout=3600)
    return round(time.monotonic() - started, 1)


# --------------------------------------------------------------------------- inside the loopback-only namespace


def http_status(url: str, timeout: float = 3.0) -> int:
    """The HTTP status of a GET (0 when nothing answers)."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


def models_loaded(url: str) -> bool:
    """True once ``/readyz`` reports the served models loaded (the other checks need the stack's services)."""
    import httpx

    try:
        return bool(httpx.get(url, timeout=3).json()["checks"]["models"]["ok"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.5) -> float:
    """Seconds until ``check()`` is true; TimeoutError naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - started


def start_time(timeout: float = 180) -> dict[str, Any]:
    """``podman run`` of ``serve`` (read-only root, tmpfs data) until ``/healthz`` is 200; then its health check."""
    name = "aegle-bench-start"
    podman("rm", "--force", "--ignore", name, check=False)
    data = Path(tempfile.mkdtemp(prefix="aegle-bench-start-"))
    os.chown(data, 10001, 10001)  # the image's user
    started = time.monotonic()
    podman("run", "--detach", "--name", name, "--network", "host", "--read-only",
           "--volume", f"{data}:/var/lib/aegle", f"localhost/aegle:{TAG}",
           "serve", "--host", "127.0.0.1", "--port", str(START_PORT))  # fmt: skip

    def up() -> bool:
        if podman("container", "exists", name, check=False).returncode != 0 or not podman(
            "ps", "--quiet", "--filter", f"name={name}", check=False
        ).stdout.strip():
            raise TimeoutError("the container exited")
        return models_loaded(f"http://127.0.0.1:{START_PORT}/readyz")

    try:
        wait_for(up, timeout, "serve: models loaded (/readyz)", interval=0.1)
        start_s = round(time.monotonic() - started, 2)
        health = podman("healthcheck", "run", name, check=False)
        return {"start_s": start_s, "healthcheck_ok": health.returncode == 0}
    except TimeoutError:
        raise TimeoutError(f"serve did not start: {podman('logs', '--tail', '30', name, check=False).stderr}") \
            from None
    finally:
        podman("rm", "--force", "--time", "5", name, check=False)
        shutil.rmtree(data, ignore_errors=True)


def token(role: str) -> str:
    """A new API token of ``role`` made in the running server container (``aegle token create``)."""
    out = podman("exec", "aegle-server", "aegle", "token", "create", "--role", role,
                 "--name", f"smoke-{role}-{time.time_ns()}").stdout  # fmt: skip
    return out.strip().splitlines()[-1]


def copies(paths: list[Path], patient: str, acquired: datetime) -> list[Any]:
    """Real instances as one new series of a new study (new UIDs), for ``patient``, acquired at ``acquired``."""
    import pydicom
    from pydicom import uid

    study, series = uid.generate_uid(), uid.generate_uid()
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID = patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
        at = acquired.astimezone(UTC)
        ds.AcquisitionDate, ds.AcquisitionTime = at.strftime("%Y%m%d"), at.strftime("%H%M%S")
        ds.TimezoneOffsetFromUTC = "+0000"
        out.append(ds)
    return out


def publish_vitals(patient: str, end: datetime, password: str) -> int:
    """A bedside monitor's heart rate and motion every 10 s over the last 2 minutes, as that device."""
    from core import AEGLE_CODES, MqttPublisher, MqttSettings, Observation, VitalsMessage, topics

    cfg = MqttSettings(host="127.0.0.1", port=1883, username=DEVICE, password=password)
    sent = 0
    with MqttPublisher(cfg, f"{DEVICE}-smoke-{time.time_ns()}") as pub:
        t = end - timedelta(seconds=120)
        while t <= end:
            message = VitalsMessage(
                message_id=f"{patient}-{t.timestamp():.0f}", site=SITE, device_id=DEVICE, patient_id=patient,
                timestamp=t, observations=[Observation(code="8867-4", value=HEART_RATE, unit="/min"),
                                           Observation(code="motion-rms", system=AEGLE_CODES, value=0.2,
                                                       unit="m/s2")],
            )  # fmt: skip
            pub.publish(topics.vitals(SITE, DEVICE), message.to_json())
            sent += 1
            t += timedelta(seconds=10)
        if not pub.flush(10) or pub.refused_count:
            raise RuntimeError(f"vitals not acknowledged by the broker (refused: {pub.refused_count})")
    return sent


def derived_back(pacs: Any, sources: list[Any], timeout: float) -> list[Any]:
    """The derived series of ``sources`` fetched from Orthanc (WADO-RS) once all of it is there; checked."""
    from server import PRIVATE_CREATOR, PRIVATE_GROUP

    study_uid, source_series = str(sources[0].StudyInstanceUID), str(sources[0].SeriesInstanceUID)

    def derived_series() -> list[str]:
        found = pacs.search_series(study_uid=study_uid)
        return [str(s.SeriesInstanceUID) for s in found if str(s.SeriesInstanceUID) != source_series]

    def complete() -> bool:
        series = derived_series()
        return len(series) == 1 and len(pacs.retrieve_series(study_uid, series[0])) == len(sources)

    wait_for(complete, timeout, f"the derived series of {sources[0].Modality} study {study_uid} in Orthanc", 1.0)
    derived = pacs.retrieve_series(study_uid, derived_series()[0])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for d in derived:
        source = by_uid[str(d.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert d.ImageType[0] == "DERIVED" and d.PatientID == source.PatientID, "not a derived instance of the patient"
        assert (d.Rows, d.Columns) == (2 * source.Rows, 2 * source.Columns), "not enhanced ×2"
        context = json.loads(d.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x03].value)
        assert context and abs(context["levels"]["heart_rate"] - HEART_RATE) < 1, f"context not applied: {context}"
    return derived


def smoke(timeout: float = 120) -> dict[str, Any]:
    """Vitals over MQTT, a CT by STOW-RS to the server, a 7-slice MR by C-STORE to the edge; derived series back."""
    import httpx
    import pydicom

    from server import DicomWebStore, encode_instance, encode_multipart

    started = time.monotonic()
    secrets_dir = STATE / "secrets"
    device_password = json.loads((secrets_dir / "devices.json").read_text())[DEVICE]
    pacs_password = (secrets_dir / "pacs-password").read_text().strip()
    pacs = DicomWebStore("http://127.0.0.1:8042/dicom-web", "aegle", pacs_password)
    api = httpx.Client(base_url="http://127.0.0.1:8400", timeout=120)
    patient = f"smoke-{time.time_ns() % 10**9}"
    now = datetime.now(UTC)
    sent = publish_vitals(patient, now, device_password)
    clinician = {"Authorization": f"Bearer {token('clinician')}"}

    def stored() -> bool:
        answer = api.get(f"/api/v1/patients/{patient}/vitals", headers=clinician,
                         params={"from": (now - timedelta(minutes=5)).isoformat(), "to": now.isoformat()})
        return answer.status_code == 200 and len(answer.json().get("samples", [])) >= 2 * sent  # two observations each

    vitals_s = wait_for(stored, 60, f"{sent} vitals messages through ingest to the store")

    files = Path(pydicom.__file__).parent / "data" / "test_files"
    ct = copies([files / "CT_small.dcm"], patient, now)
    mr = copies(sorted((files / "dicomdirtests" / "98892003" / "MR700").iterdir()), patient, now)
    boundary = pydicom.uid.generate_uid().replace(".", "")
    answer = api.post("/dicom-web/studies", content=encode_multipart([encode_instance(ds) for ds in ct], boundary),
                      headers={"Authorization": f"Bearer {token('device')}",
                               "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    if answer.status_code not in (200, 202):
        raise RuntimeError(f"STOW-RS to the server: HTTP {answer.status_code}: {answer.text[:500]}")
    from aegle import c_store  # a modality's C-STORE to the edge node, as the demo sends it

    statuses = c_store(11112, mr)
    if any(statuses):
        raise RuntimeError(f"C-STORE to the edge node: statuses {statuses}")
    ct_derived = derived_back(pacs, ct, timeout)
    mr_derived = derived_back(pacs, mr, timeout)
    return {
        "ok": True, "vitals_sent": sent, "vitals_stored_s": round(vitals_s, 1), "stow_http": answer.status_code,
        "ct_derived": len(ct_derived), "mr_cstore_statuses": sorted(set(statuses)), "mr_derived": len(mr_derived),
        "smoke_s": round(time.monotonic() - started, 1),
    }  # fmt: skip


def stack_phase() -> dict[str, Any]:
    """Inside the loopback-only namespace: start-up time, stack up, smoke test, stack down; nothing left."""
    result: dict[str, Any] = start_time()
    up = ROOT / "deploy" / "stack" / "up"
    down = ROOT / "deploy" / "stack" / "down"
    started = time.monotonic()
    try:
        subprocess.run([str(up)], check=True, env=podman_env(), timeout=600)
        result["stack_up_s"] = round(time.monotonic() - started, 1)
        try:
            result["smoke"] = smoke()
        except (AssertionError, RuntimeError, TimeoutError) as exc:
            result["smoke"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        stopped = time.monotonic()
        subprocess.run([str(down)], check=True, env=podman_env(), timeout=300)
        result["stack_down_s"] = round(time.monotonic() - stopped, 1)
    left = podman("ps", "--all", "--quiet", "--filter", "pod=aegle", check=False).stdout.split()
    left += podman("ps", "--all", "--quiet", "--filter", "name=aegle-bench", check=False).stdout.split()
    result["containers_left"] = len(left)
    return result


def in_loopback_namespace() -> dict[str, Any]:
    """Run :func:`stack_phase` in a new network namespace with only loopback up (this module, re-executed)."""
    command = f"ip link set lo up && exec {sys.executable} -m bench.images --phase stack"
    done = subprocess.run(["unshare", "--net", "sh", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          env=podman_env(), timeout=1800)  # fmt: skip
    sys.stderr.write(done.stderr[-4000:])
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the stack phase failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    """Command line; the last line printed is the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="no build: use the images deploy/build made")
    parser.add_argument("--cold", action="store_true", help="remove images, base and build cache before building")
    parser.add_argument("--phase", choices=["all", "stack"], default="all", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "stack":
        print(json.dumps(stack_phase()))
        return 0
    started = time.monotonic()
    reason = unavailable_reason()
    if reason is not None:
        print(json.dumps({"skipped": reason}))
        return 0
    result: dict[str, Any] = {"tag": TAG}
    if args.quick:
        missing = missing_images()
        if missing:
            print(json.dumps({"skipped": f"images missing (run deploy/build): {', '.join(missing)}"}))
            return 1
    else:
        result["build_s"] = build(args.cold)
        result["cold"] = args.cold
    result["images_mb"] = image_sizes()
    result["serve_image_mb"] = result["images_mb"]["aegle"]
    result |= in_loopback_namespace()
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0 if result.get("smoke", {}).get("ok") and result["containers_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
