"""DICOM test helpers shared by the tests: packaged real files and the dciodvfy check."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from aegle.dicomcheck import dciodvfy
from server.study import EnhanceFn


def pydicom_file(name: str) -> Path:
    """A file from pydicom's own test files (never downloads)."""
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def pydicom_data_file(name: str) -> Path:
    """A file from the pydicom-data package (installed with the data extra; never downloads)."""
    import data_store

    return Path(data_store.__file__).parent / "data" / name


def assert_dciodvfy_clean(
    datasets: Iterable[Dataset], directory: Path, inherited: Iterable[str] = ()
) -> list[str]:
    """Write each dataset to ``directory`` and fail on any dciodvfy error; returns the (distinct) warnings.

    ``inherited``: exact error lines the *source* file already has in attributes the derived object must copy
    unchanged (patient/study/frame of reference); each must also be reported for the source by the caller.
    """
    allowed = set(inherited)
    warnings: set[str] = set()
    directory.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        errors, found = dciodvfy(path)
        unexpected = [e for e in errors if e not in allowed]
        assert not unexpected, f"dciodvfy errors in {path.name}:\n" + "\n".join(unexpected)
        warnings.update(found)
    return sorted(warnings)


def random_enhancer(scale: int = 2, seed: int = 0) -> EnhanceFn:
    """The real ``enhancer`` architecture with random-init weights (plumbing only: its output is no better than
    bicubic), as an EnhanceFn returning ``server.inference.EnhanceOutput``."""
    import numpy as np
    import torch

    from gan.models import build
    from server.inference import EnhanceOutput

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = build("enhancer", scale=scale).eval()

    def enhance(images: np.ndarray, context: np.ndarray | None) -> EnhanceOutput:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
            c = None if context is None else torch.from_numpy(np.tile(context, (len(images), 1)))
            out = model(x, c)[:, 0].numpy()
        return EnhanceOutput(images=out, model_name=f"enhancer-x{scale}-random-init", model_version="0.0.0-test",
                             strength=None, alphas=None, backend="torch", context_used=context is not None,
                             scale=scale)

    return enhance
