"""DICOM input: enhance one instance or a series (returns the derived DICOM), and DICOMweb STOW-RS.

HTTP only: both routes read the body, audit, and hand the instances to the app's study pipeline
(:class:`server.study.StudyPipeline`, steps 3–9 of :mod:`server.study`: context at acquisition time → triage →
the study path's enhancer → derived series → PACS → result, recorded in the study log and the metrics). With a
PACS configured the derived series is stored there; without one it is only returned to the caller.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from server.api import images
from server.api.deps import (
    api_error,
    audit,
    binary_body,
    engine,
    image_resource,
    read_body,
    require,
    state,
)
from server.api.tokens import Principal
from server.pacs.dicomweb import decode_multipart, encode_instance, encode_multipart
from server.pacs.errors import PacsError
from server.study import DicomInputError, SeriesResult, StudyPipeline, read_instance

router = APIRouter(tags=["dicom"])
DICOM_ROLES = ("clinician", "operator")
STOW_ROLES = ("device", "operator")


def pipeline(request: Request) -> StudyPipeline:
    """The app's study pipeline (built at start-up with the engine, on the vitals store and PACS); without an
    engine there is none: 503 ``engine-unavailable``."""
    engine(request)
    flow = state(request).pipeline
    assert flow is not None, "the app's lifespan builds the pipeline once the engine is there"
    return flow


def refuse_when_saturated(request: Request) -> None:
    """503 + Retry-After before starting a series when the inference queue is already full."""
    eng = engine(request)
    if eng.batcher.depth >= eng.batcher.queue_max:
        hint = str(eng.batcher.retry_after_s())
        raise api_error(503, "queue-full", "inference queue full", headers={"Retry-After": hint})


def read_parts(body: bytes, content_type: str, max_pixels: int) -> list[Dataset | DicomInputError]:
    """Each part of a multipart/related body parsed as a DICOM instance, or the reason it was refused."""
    try:
        parts = decode_multipart(body, content_type)
    except PacsError as exc:
        raise api_error(400, "bad-multipart", str(exc)) from None
    if not parts:
        raise api_error(400, "bad-multipart", "the multipart body has no parts")
    out: list[Dataset | DicomInputError] = []
    for part in parts:
        try:
            out.append(read_instance(part, max_pixels=max_pixels))
        except DicomInputError as exc:
            out.append(exc)
    return out


def audit_instances(request: Request, principal: Principal, action: str, datasets: Sequence[Dataset]) -> None:
    """One audit entry per patient and study touched (identifiers as they are: see server.api.audit)."""
    seen = {(str(ds.get("PatientID", "")), str(ds.StudyInstanceUID)) for ds in datasets}
    for patient_id, study_uid in sorted(seen):
        audit(request, principal, action, f"patient:{patient_id}", f"study:{study_uid}")


@router.post(
    "/api/v1/enhance/dicom",
    summary="Enhance one DICOM instance (application/dicom) or a series (multipart/related); returns the derived "
    "DICOM; `X-Aegle-Result` (JSON) says what was applied",
    response_class=Response,
    responses={200: {"content": {"application/dicom": {}, "multipart/related": {}}}},
    openapi_extra=binary_body("application/dicom", 'multipart/related; type="application/dicom"'),
)
async def enhance_dicom(request: Request, principal: Annotated[Principal, Depends(require(*DICOM_ROLES))]) -> Response:
    body = await read_body(request)
    st = state(request)
    content_type = request.headers.get("content-type", "")
    series = content_type.lower().startswith("multipart/")
    if series:
        parsed = read_parts(body, content_type, st.settings.api.max_pixels)
        datasets = [p for p in parsed if isinstance(p, Dataset)]
        if not datasets:
            first = parsed[0]
            assert isinstance(first, DicomInputError)
            raise api_error(first.status, first.reason, f"no usable instance in the series; first: {first.detail}")
    else:
        try:
            datasets = [read_instance(body, max_pixels=st.settings.api.max_pixels)]
        except DicomInputError as exc:
            audit(request, principal, "dicom.enhance", image_resource(body), f"refused: {exc.reason}")
            raise api_error(exc.status, exc.reason, exc.detail) from None
    audit_instances(request, principal, "dicom.enhance", datasets)
    refuse_when_saturated(request)
    flow = pipeline(request)
    result = await run_in_threadpool(flow.process_series, datasets)
    header = images.applied_header(result.summary())
    if not result.derived:
        raise api_error(422, "not-enhanced", f"no derived instance was produced: {header}")
    if not series:
        return Response(encode_instance(result.derived[0]), media_type="application/dicom",
                        headers={"X-Aegle-Result": header})  # fmt: skip
    boundary = secrets.token_hex(16)
    return Response(
        encode_multipart([encode_instance(ds) for ds in result.derived], boundary),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers={"X-Aegle-Result": header},
    )


def _sop_item(sop_class: str, sop_instance: str, failure: int | None = None) -> dict[str, Any]:
    item = {"00081150": {"vr": "UI", "Value": [sop_class]}, "00081155": {"vr": "UI", "Value": [sop_instance]}}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


# PS3.18 STOW-RS failure reasons: 0xC000 cannot understand, 0x0110 processing failure, 0xA700 out of resources.
_CANNOT_UNDERSTAND, _PROCESSING_FAILURE, _OUT_OF_RESOURCES = 0xC000, 0x0110, 0xA700


@router.post(
    "/dicom-web/studies",
    summary='DICOMweb STOW-RS: multipart/related; type="application/dicom"; each series is enhanced and stored',
    openapi_extra=binary_body('multipart/related; type="application/dicom"'),
)
async def stow(request: Request, principal: Annotated[Principal, Depends(require(*STOW_ROLES))]) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related") or "application/dicom" not in content_type.lower():
        raise api_error(415, "unsupported-media-type", 'STOW-RS needs multipart/related; type="application/dicom"')
    body = await read_body(request)
    st = state(request)
    parsed = read_parts(body, content_type, st.settings.api.max_pixels)
    datasets = [p for p in parsed if isinstance(p, Dataset)]
    audit_instances(request, principal, "dicom.stow", datasets)
    failed = [_sop_item("", "", _CANNOT_UNDERSTAND) for p in parsed if isinstance(p, DicomInputError)]
    results: list[SeriesResult] = []
    if datasets:
        refuse_when_saturated(request)
        flow = pipeline(request)
        results = await run_in_threadpool(flow.process, datasets)
    stored: list[dict[str, Any]] = []
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for result in results:
        enhanced = {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in result.derived}
        reasons = {f.sop_instance_uid: f for f in result.failures if f.sop_instance_uid}
        for uid, ds in by_uid.items():
            if str(ds.SeriesInstanceUID) != result.series_uid:
                continue
            if uid in enhanced or uid in result.skipped:
                stored.append(_sop_item(str(ds.SOPClassUID), uid))
            else:
                retry = reasons[uid].retryable if uid in reasons else False
                failed.append(_sop_item(str(ds.SOPClassUID), uid, _OUT_OF_RESOURCES if retry else _PROCESSING_FAILURE))
    response: dict[str, Any] = {}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if stored else 409
    return JSONResponse(
        response, status_code=status, media_type="application/dicom+json",
        headers={"X-Aegle-Result": images.applied_header({"series": [r.summary() for r in results]})},
    )  # fmt: skip
