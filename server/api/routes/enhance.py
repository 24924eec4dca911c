"""Enhance a plain image (PNG 8/16-bit, NPY) and triage-classify one; DICOM input goes through ``dicom.py``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from server.api import images
from server.api.deps import (
    api_error,
    audit,
    aware,
    binary_body,
    engine,
    image_resource,
    patient_context,
    read_body,
    require,
    state,
)
from server.api.tokens import Principal
from server.inference import EnhanceOutput

if TYPE_CHECKING:
    from core import SensorContext

router = APIRouter(tags=["enhance"])
ENHANCE_ROLES = ("clinician", "operator")
MEDIA = {"png": "image/png", "npy": "application/x-npy"}
APPLIED_TEXT_KEY = "aegle:applied"


def applied(out: EnhanceOutput, context: SensorContext | None) -> dict[str, Any]:
    """What was applied to an image: model, version, backend, scale, strength (mean α and per block), context
    (without the patient id)."""
    return {
        "model": out.model_name, "version": out.model_version, "backend": out.backend, "scale": out.scale,
        "strength": out.strength, "alphas": list(out.alphas) if out.alphas is not None else None,
        "context": None if context is None else context.to_dict(patient=False),
    }  # fmt: skip


@router.post("/api/v1/enhance",
    summary="Enhance a plain image (body: PNG or NPY); returns the image in the same format",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/x-npy": {}},
                     "description": "the enhanced image; `X-Aegle-Applied` (JSON) says what was applied"}},
    openapi_extra=binary_body(*MEDIA.values()),
)  # fmt: skip
async def enhance_plain(
    request: Request,
    principal: Annotated[Principal, Depends(require(*ENHANCE_ROLES))],
    patient_id: Annotated[str | None, Query(description="use this patient's sensor context")] = None,
    at: Annotated[datetime | None, Query(description="context time (ISO 8601 with offset); default now")] = None,
) -> Response:
    data = await read_body(request)
    st = state(request)
    resource = f"patient:{patient_id}" if patient_id is not None else image_resource(data)
    audit(request, principal, "image.enhance", resource, image_resource(data))
    image = images.decode(data, st.settings.api.max_pixels)
    eng = engine(request)
    context = None
    if patient_id is not None:
        context = await run_in_threadpool(patient_context, st, patient_id, aware(at, datetime.now(UTC)))
    vector = None if context is None else context.vector
    model = eng.settings.enhancer_for("live").name  # the live path's operating point (fast by default)
    out = await run_in_threadpool(eng.enhance, image.planes, vector, model=model,
                                  queue_timeout=st.settings.api.queue_timeout_s)  # fmt: skip
    facts = applied(out, context)
    header = images.applied_header(facts)
    body = images.encode(image, out.images, {APPLIED_TEXT_KEY: header} if image.format == "png" else None)
    return Response(body, media_type=MEDIA[image.format], headers={"X-Aegle-Applied": header})


@router.post(
    "/api/v1/classify",
    summary="Triage one grey image (PNG, NPY, or DICOM: its middle frame): diagnostic quality or degraded, and why",
    openapi_extra=binary_body(*MEDIA.values(), "application/dicom"),
)
async def classify(
    request: Request, principal: Annotated[Principal, Depends(require(*ENHANCE_ROLES))]
) -> dict[str, Any]:
    data = await read_body(request)
    st = state(request)
    if data[128:132] == b"DICM":  # a DICOM Part 10 file: its middle frame, mapped as the pipeline maps it
        from server.study import DicomInputError, read_instance, to_model_space

        try:
            ds = read_instance(data, max_pixels=st.settings.api.max_pixels)
        except DicomInputError as exc:
            audit(request, principal, "image.classify", image_resource(data), f"refused: {exc.reason}")
            raise api_error(exc.status, exc.reason, exc.detail) from None
        audit(request, principal, "image.classify", f"patient:{ds.get('PatientID', '')}",
              f"study:{ds.StudyInstanceUID}")  # fmt: skip
        model_image = to_model_space(ds)
        if model_image.mapping.is_rgb:
            raise api_error(415, "not-grayscale", "triage classifies grey-level images; this one is RGB")
        frames = model_image.frames
        return await triage_response(request, frames[len(frames) // 2])
    audit(request, principal, "image.classify", image_resource(data))
    image = images.decode(data, st.settings.api.max_pixels)
    if image.rgb:
        raise api_error(415, "not-grayscale", "triage classifies grey-level images; this one is RGB")
    return await triage_response(request, image.planes[0])


async def triage_response(request: Request, plane: np.ndarray) -> dict[str, Any]:
    """Run the triage classifier on one [0, 1] plane and describe the result."""
    eng = engine(request)
    try:
        result = await run_in_threadpool(eng.triage, plane, queue_timeout=state(request).settings.api.queue_timeout_s)
    except ValueError as exc:
        raise api_error(400, "bad-image", str(exc)) from None
    card = eng.model(eng.settings.triage.name).card
    return {
        "model": card.name, "version": card.version, "probabilities": result.probabilities,
        "enhance": result.enhance, "degradations": list(result.degradations), "reason": result.reason,
    }  # fmt: skip
