"""Synthesize: labelled synthetic images from the hybrid GAN (``gan.synthesis.generate``).

The result is a PNG whose tEXt chunks say ``aegle:synthetic = true`` with the generator chain, label and seed;
the response carries ``X-Aegle-Synthetic: true``. Synthetic images never go to the PACS: this route has no PACS
path at all. One generation runs at a time; a second concurrent request gets 503 + Retry-After.
"""

from __future__ import annotations

import importlib.util
import io
import threading
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from server.api.deps import ServiceState, api_error, require, state
from server.api.tokens import Principal

router = APIRouter(tags=["synthesize"])
SYNTH_ROLES = ("operator",)
GAN_NAME = "hybrid-gan"
_busy = threading.Semaphore(1)
_load_lock = threading.Lock()


def generators(st: ServiceState) -> dict[str, Any]:
    """The three hybrid-GAN stages from the registry, loaded once; 503 (with the reason) if they are missing."""
    from gan import RegistryError, load_generators

    with _load_lock:
        cached = st.gan_generators
        if cached is None:
            try:
                cached = load_generators(st.settings.inference.weights_dir, GAN_NAME)
            except (RegistryError, ValueError) as exc:
                raise api_error(503, "model-not-loaded", f"hybrid GAN not available: {exc}") from None
            st.gan_generators = cached
    return cached


def render(st: ServiceState, label: int, seed: int) -> tuple[bytes, dict[str, str]]:
    """One synthetic 8-bit RGB PNG and its tEXt marks; 503 where torch is not installed (the serving image)."""
    if importlib.util.find_spec("torch") is None:
        raise api_error(503, "model-not-loaded", "hybrid GAN not available: synthesis needs torch, not installed here")
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from gan import generate

    batch = generate(st.settings.inference.weights_dir, 1, label, seed, name=GAN_NAME, generators=generators(st))
    rgb = ((batch.images[0].clamp(-1, 1).permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
    marks = {"aegle:synthetic": "true", "aegle:generator": batch.generator, "aegle:label": str(label),
             "aegle:seed": str(seed), "aegle:notice": "SYNTHETIC IMAGE - not a patient, not for diagnosis"}  # fmt: skip
    info = PngInfo()
    for key, value in marks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue(), marks


@router.post(
    "/api/v1/synthesize",
    summary="One labelled synthetic image (PNG, marked synthetic; never stored to the PACS)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def synthesize(
    request: Request,
    _: Annotated[Principal, Depends(require(*SYNTH_ROLES))],
    label: Annotated[int, Query(ge=0, le=1, description="0 no lesion, 1 lesion")] = 1,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    if not _busy.acquire(blocking=False):
        raise api_error(503, "synthesis-busy", "a synthesis is running", headers={"Retry-After": "2"})
    try:
        body, marks = await run_in_threadpool(render, state(request), label, seed)
    finally:
        _busy.release()
    return Response(body, media_type="image/png",
                    headers={"X-Aegle-Synthetic": "true", "X-Aegle-Generator": marks["aegle:generator"]})  # fmt: skip
