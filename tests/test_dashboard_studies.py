"""The dashboard's studies list and viewer, against the real service and a real Orthanc.

A real CT (pydicom's CT_small, copied into a 3-slice series with new UIDs and positions) is sent by STOW-RS to a
real ``AegleService`` (uvicorn on loopback) whose PACS is a real Orthanc; the patient has stored vitals, so the
series is enhanced with a context (heart rate and SpO₂ present, the other channels missing). The viewer's frames
must be the source and derived pixels in Hounsfield units: checked against the source files and the derived series
fetched back from Orthanc. With the service's own copy gone, the same frames come from Orthanc over WADO-RS.
In Debian's Chromium: the list links to the viewer; both images render at the derived series' size and are not
blank; a window preset changes the pixels; the slider, the difference view and the keyboard work; no request
leaves 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from aegle.localservices import Orthanc
from core.context import CHANNELS
from core.settings import DashboardSettings, PacsSettings
from gan import SOFT_TISSUE_WINDOW
from server.api.tokens import ROLES
from server.dashboard.studies import StudyBrowser
from server.pacs import DicomWebStore
from server.pacs.dicomweb import encode_multipart
from server.study import bicubic
from tests.api_support import LiveServer, seed_vitals, service_settings

CHROMIUM = Path("/usr/bin/chromium")
PATIENT = "enc-viewer-1"


@dataclass
class Viewed:
    url: str
    tokens: dict[str, str]
    service: Any
    pacs: DicomWebStore
    sources: list[Dataset]
    event: dict[str, Any]

    @property
    def study_uid(self) -> str:
        return str(self.sources[0].StudyInstanceUID)

    @property
    def derived_uid(self) -> str:
        return str(self.event["derived_series_uid"])

    @contextmanager
    def session(self, role: str) -> Iterator[httpx.Client]:
        """An HTTP client logged in to the dashboard as ``role`` (the session cookie, as a browser holds it)."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            r = client.post("/dashboard/login", data={"token": self.tokens[role]}, headers={"Origin": self.url})
            assert r.status_code == 303, r.text
            yield client


def ct_series(acquired: datetime, slices: int = 3) -> list[Dataset]:
    """CT_small as a ``slices``-slice series of a new study for :data:`PATIENT` (new UIDs, 5 mm apart)."""
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    study, series = uid.generate_uid(), uid.generate_uid()
    out = []
    for i in range(slices):
        ds = pydicom.dcmread(path)
        ds.PatientID = PATIENT
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
        ds.InstanceNumber = slices - i  # sent in reverse order: the viewer orders by instance number
        ds.ImagePositionPatient = [*map(float, ds.ImagePositionPatient[:2]), float(ds.ImagePositionPatient[2]) + 5 * i]
        ds.AcquisitionDate, ds.AcquisitionTime = acquired.strftime("%Y%m%d"), acquired.strftime("%H%M%S")
        ds.TimezoneOffsetFromUTC = "+0000"
        out.append(ds)
    return out


def dicom_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def viewed(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc, engine: Any) -> Iterator[Viewed]:
    """The service with Orthanc as its PACS, one CT series sent by STOW-RS and enhanced with a context."""
    from server.service import AegleService

    workdir = tmp_path_factory.mktemp("studies")
    settings = service_settings(workdir)
    settings.inference = engine.settings
    user, password = orthanc.auth
    settings.pacs = PacsSettings(dicomweb_url=orthanc.dicomweb_url, username=user, password=password)
    settings.dashboard = DashboardSettings(frames_path=workdir / "frames")
    acquired = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    seed_vitals(settings, PATIENT, acquired + timedelta(seconds=30))
    sources = ct_series(acquired)
    service = AegleService(settings, engine=engine)
    tokens = {role: service.state.tokens.create(f"{role}-viewer", role) for role in ROLES}
    with LiveServer(service.app) as live, DicomWebStore(orthanc.dicomweb_url, user, password) as pacs:
        boundary = uid.generate_uid().replace(".", "")
        r = httpx.post(f"{live.url}/dicom-web/studies", timeout=120,
                       content=encode_multipart([dicom_bytes(ds) for ds in sources], boundary),
                       headers={"Authorization": f"Bearer {tokens['operator']}",
                                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert r.status_code == 200, r.text
        results = service.state.studies.list(study_uid=str(sources[0].StudyInstanceUID))
        assert len(results) == 1 and results[0]["result"]["status"] == "ok", results
        yield Viewed(live.url, tokens, service, pacs, sources, results[0]["result"])


def hu(datasets: list[Dataset]) -> np.ndarray:
    return np.stack([apply_modality_lut(ds.pixel_array, ds).astype(np.float32) for ds in datasets])


def frames(client: httpx.Client, v: Viewed, which: str, slices: int) -> np.ndarray:
    out = []
    for i in range(slices):
        r = client.get(f"/dashboard/api/studies/{v.study_uid}/series/{v.derived_uid}/frames/{i}",
                       params={"which": which})  # fmt: skip
        assert r.status_code == 200, r.text
        shape = (int(r.headers["x-rows"]), int(r.headers["x-columns"]))
        out.append(np.frombuffer(r.content, dtype="<f4").reshape(shape))
    return np.stack(out)


def test_the_list_and_the_series_show_what_the_study_log_and_the_pacs_hold(viewed: Viewed) -> None:
    with viewed.session("clinician") as client:
        rows = client.get("/dashboard/api/studies").json()["results"]
        row = next(r for r in rows if r["study_uid"] == viewed.study_uid)
        assert row["derived_series_uid"] == viewed.derived_uid and row["status"] == "ok"
        assert row["counts"]["enhanced"] == 3 and row["triage_total"] == 3
        info = client.get(f"/dashboard/api/studies/{viewed.study_uid}/series/{viewed.derived_uid}").json()

    derived = sorted(viewed.pacs.retrieve_series(viewed.study_uid, viewed.derived_uid),
                     key=lambda ds: int(ds.InstanceNumber))  # fmt: skip
    meta = info["series"]
    assert meta["from"] == "kept" and meta["modality"] == "CT" and meta["units"] == "HU"
    assert (meta["slices"], meta["rows"], meta["columns"]) == (3, derived[0].Rows, derived[0].Columns)
    assert (meta["source_rows"], meta["source_columns"]) == (128, 128) and meta["rows"] == 256
    # Slices in instance-number order, each beside its own source; the window is the source's own, else soft tissue.
    by_number = sorted(viewed.sources, key=lambda ds: int(ds.InstanceNumber))
    assert meta["source_sop_instance_uids"] == [str(ds.SOPInstanceUID) for ds in by_number]
    assert [str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in derived] == meta["source_sop_instance_uids"]
    assert "WindowCenter" not in by_number[0] and meta["window"] == list(SOFT_TISSUE_WINDOW)  # CT without a window
    # Triage with its probabilities, per source instance; the context used and the channels it lacked.
    for sop in meta["source_sop_instance_uids"]:
        t = info["triage"][sop]
        assert set(t) >= {"enhance", "reason", "probabilities", "degradations"} and t["probabilities"]
        assert all(0 <= p <= 1 for p in t["probabilities"].values())
    assert info["context"]["levels"]["heart_rate"] is not None
    assert set(info["missing_channels"]) == set(CHANNELS) - {"heart_rate", "spo2"}
    assert info["model"] == viewed.event["model"] and info["strength"] == viewed.event["strength"]
    assert "not for diagnostic use" in info["notice"]


def test_frames_are_the_source_and_derived_pixels_in_hounsfield_units(viewed: Viewed) -> None:
    derived = sorted(viewed.pacs.retrieve_series(viewed.study_uid, viewed.derived_uid),
                     key=lambda ds: int(ds.InstanceNumber))  # fmt: skip
    by_number = sorted(viewed.sources, key=lambda ds: int(ds.InstanceNumber))
    with viewed.session("operator") as client:
        after = frames(client, viewed, "after", 3)
        before = frames(client, viewed, "before", 3)
        missing = client.get(f"/dashboard/api/studies/{viewed.study_uid}/series/{viewed.derived_uid}/frames/3")
        assert missing.status_code == 404 and missing.json()["detail"]["reason"] == "no-frame"
    np.testing.assert_array_equal(after, hu(derived))
    np.testing.assert_allclose(before, bicubic(hu(by_number), 2), atol=1e-2)
    assert after.min() < -500 and after.max() > 500  # 12-bit CT range kept, not truncated to 8 bits

    # The service's own copy gone (another replica, evicted): the derived series comes from the PACS, the source
    # too once the PACS holds it; the frames are the same.
    state = viewed.service.state
    shutil.rmtree(state.settings.dashboard.frames_path / viewed.derived_uid)
    fresh = StudyBrowser(dataclasses.replace(state, frames=None))
    view, origin = fresh.series(viewed.study_uid, viewed.derived_uid)
    assert origin == "pacs" and view.before is None
    np.testing.assert_array_equal(fresh.frame(viewed.study_uid, viewed.derived_uid, "after", 1), after[1])
    viewed.pacs.store(viewed.sources)
    fresh = StudyBrowser(dataclasses.replace(state, frames=None))
    view, origin = fresh.series(viewed.study_uid, viewed.derived_uid)
    assert origin == "pacs" and view.meta["source_sop_instance_uids"] == [str(ds.SOPInstanceUID) for ds in by_number]
    np.testing.assert_allclose(fresh.frame(viewed.study_uid, viewed.derived_uid, "before", 2), before[2], atol=1e-3)


def test_the_viewer_takes_the_roles_of_the_study_routes_and_audits_each_study_once(viewed: Viewed) -> None:
    with httpx.Client(base_url=viewed.url, timeout=30) as anonymous:
        r = anonymous.get(f"/dashboard/api/studies/{viewed.study_uid}/series/{viewed.derived_uid}")
        assert r.status_code == 401
    with viewed.session("admin") as admin:
        r = admin.get(f"/dashboard/api/studies/{viewed.study_uid}/series/{viewed.derived_uid}/frames/0")
        assert r.status_code == 403 and r.json()["detail"]["reason"] == "forbidden-role"
        assert admin.get("/dashboard/viewer").status_code == 403
    audit = viewed.service.state.audit
    before = len(audit.query(actor="clinician-viewer", action="study.read", resource=f"study:{viewed.study_uid}"))
    with viewed.session("clinician") as client:
        for _ in range(2):
            r = client.get(f"/dashboard/api/studies/{viewed.study_uid}/series/{viewed.derived_uid}")
            assert r.status_code == 200
        for bad in (f"/dashboard/api/studies/{viewed.study_uid}/series/1.2.3.4",
                    f"/dashboard/api/studies/{viewed.study_uid}/series/..%2F..%2Fetc"):  # fmt: skip
            assert client.get(bad).status_code == 404
    entries = audit.query(actor="clinician-viewer", action="study.read", resource=f"study:{viewed.study_uid}")
    assert len(entries) == before + 1  # once per session


# --------------------------------------------------------------------------- in Chromium


@pytest.fixture
def page(viewed: Viewed) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed (scripts/setup installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        context.close()
        browser.close()
    stray = [u for u in requests if urlsplit(u).hostname != "127.0.0.1" or not u.startswith(viewed.url)]
    assert requests and not stray, stray


def pixels(page: Any, canvas: str) -> tuple[int, int, str, float]:
    """Width, height, a hash of the grey values and their standard deviation, of a canvas (computed in the page)."""
    width, height, digest, std = page.evaluate(
        """(id) => { const c = document.getElementById(id);
                     const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                     let h = 2166136261, s = 0, s2 = 0;
                     for (let i = 0; i < d.length; i += 4) {
                       h = Math.imul(h ^ d[i], 16777619); s += d[i]; s2 += d[i] * d[i];
                     }
                     const n = d.length / 4, mean = s / n, sd = Math.sqrt(Math.max(s2 / n - mean * mean, 0));
                     return [c.width, c.height, (h >>> 0).toString(16), sd]; }""",
        canvas,
    )
    return width, height, digest, std


def rendered(page: Any, prefix: str) -> None:
    page.wait_for_function("(p) => (document.getElementById('viewer').dataset.rendered || '').startsWith(p)",
                           arg=prefix)


def test_browser_the_viewer_shows_before_and_after_and_windows_them(page: Any, viewed: Viewed) -> None:
    page.goto(viewed.url + "/dashboard/login#token=" + viewed.tokens["clinician"])  # the demo's login link
    page.wait_for_url(f"{viewed.url}/dashboard/ward")
    assert "token" not in page.url
    page.get_by_role("link", name="Studies").click()
    page.wait_for_url(f"{viewed.url}/dashboard/studies")
    page.locator("#notice", has_text="not for diagnostic use").wait_for()
    page.get_by_role("link", name=f"Open series …{viewed.derived_uid[-16:]} in the viewer").click()
    page.wait_for_url(f"{viewed.url}/dashboard/viewer?*")
    rendered(page, "1:")  # the middle slice of 3
    derived = viewed.pacs.retrieve_series(viewed.study_uid, viewed.derived_uid)
    w_before, h_before, _, std_before = pixels(page, "before")
    w_after, h_after, series_after, std_after = pixels(page, "after")
    assert (w_after, h_after) == (w_before, h_before) == (derived[0].Columns, derived[0].Rows)
    assert std_before > 5 and std_after > 5  # not blank
    assert "Enhancement" in page.locator("#triage").inner_text() and "%" in page.locator("#triage").inner_text()
    assert "missing" in page.locator("#context").inner_text() and "Heart rate" in page.locator("#context").inner_text()

    page.get_by_role("button", name="Bone").click()
    rendered(page, "1:400:1800:")
    _, _, bone_after, _ = pixels(page, "after")
    assert bone_after != series_after
    page.fill("#center", "0")
    page.fill("#width", "3000")
    page.locator("#width").press("Enter")
    rendered(page, "1:0:3000:")
    assert pixels(page, "after")[2] not in (bone_after, series_after)

    page.locator("#viewer").focus()
    page.keyboard.press("ArrowDown")
    rendered(page, "2:")
    assert page.locator("#slice-out").inner_text() == "3 / 3"
    page.keyboard.press("+")
    zoomed = pixels(page, "after")[2]
    page.keyboard.press("0")
    assert pixels(page, "after")[2] != zoomed

    page.get_by_label("slider").check()
    rendered(page, "2:0:3000:slider")
    assert pixels(page, "slider")[3] > 5
    page.get_by_label("difference").check()
    rendered(page, "2:0:3000:difference")
    _, _, _, std_diff = pixels(page, "difference")
    assert std_diff > 1 and "Enhanced − original" in page.locator("#difference-caption").inner_text()
