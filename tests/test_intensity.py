"""One intensity normalisation (``gan.intensity``), per instance: the served path and the training path give the
model identical inputs for the same real DICOM instance; NIfTI/NRRD volumes are normalised slice by slice."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gan import data
from gan.intensity import SOFT_TISSUE_WINDOW, intensity_map, normalise_volume
from server.study import read_instance, to_model_space
from tests.dicom_support import pydicom_file


@pytest.fixture(scope="module")
def dicom_volumes() -> dict[str, data.Volume]:
    """Every DICOM instance training uses (gan.data's pydicom dataset), by source."""
    return {v.source: v for v in data.load("pydicom")}


def _served(path: Path) -> np.ndarray:
    """What the server hands the model for a received instance."""
    return to_model_space(read_instance(path.read_bytes(), max_pixels=10**8)).pixels


def test_served_and_training_inputs_are_identical_for_every_dicom_instance(
    dicom_volumes: dict[str, data.Volume],
) -> None:
    """Bit for bit, for CT (windows 40/400 and 40/100), MR with and without a rescale, a 10-frame MR instance and
    MONOCHROME1 CR."""
    assert {"pydicom:MR_small", "pydicom:CT_small", "pydicom-data:MR2_UNCR", "pydicom-data:emri_small",
            "pydicom-data:RG1_UNCR"} <= set(dicom_volumes)  # fmt: skip
    assert pydicom_file("MR_small.dcm") == Path(dicom_volumes["pydicom:MR_small"].meta["path"])
    assert pydicom_file("CT_small.dcm") == Path(dicom_volumes["pydicom:CT_small"].meta["path"])
    for source, volume in dicom_volumes.items():
        trained = normalise_volume(volume)
        served = _served(Path(volume.meta["path"]))
        assert trained.dtype == served.dtype == np.float32, source
        expected = (1, *trained.shape) if trained.ndim == 2 else trained.shape  # the server keeps a frame axis
        assert served.shape == expected, source
        np.testing.assert_array_equal(served.reshape(trained.shape), trained, err_msg=source)


def test_the_unit_is_the_instance(dicom_volumes: dict[str, data.Volume]) -> None:
    """MR: the instance's minimum maps to 0 and its p99.5 to 1 (over all frames of a multi-frame instance)."""
    mr = dicom_volumes["pydicom:MR_small"]
    values = mr.pixels.astype(np.float64)
    model = intensity_map(values)
    assert model.gain * values.min() + model.offset == pytest.approx(0.0, abs=1e-12)
    assert model.gain * np.percentile(values, 99.5) + model.offset == pytest.approx(1.0)
    np.testing.assert_array_equal(normalise_volume(mr), model(values))
    frames = dicom_volumes["pydicom-data:emri_small"]
    assert frames.single_instance and frames.pixels.ndim == 3
    one_map = intensity_map(frames.pixels.astype(np.float64))
    np.testing.assert_array_equal(normalise_volume(frames), one_map(frames.pixels))


def test_nifti_and_nrrd_volumes_are_normalised_slice_by_slice() -> None:
    """A 3-D volume from another format: each axial slice as a single-frame instance would be; CT by its window."""
    mni = data.load_mni152()[0]
    assert not mni.single_instance
    image = normalise_volume(mni)
    for z in (40, 90, 150):
        plane = mni.pixels[z].astype(np.float64)
        np.testing.assert_array_equal(image[z], intensity_map(plane)(plane))
    whole = normalise_volume(dataclasses.replace(mni, single_instance=True))  # as one multi-frame instance
    assert not np.array_equal(whole, image)
    lung = next(v for v in data.load_pyradiomics() if v.modality == "CT")
    np.testing.assert_array_equal(normalise_volume(lung), intensity_map(lung.pixels, window=lung.window)(lung.pixels))


def test_ct_window_and_monochrome1() -> None:
    """CT: ``(HU − (center − width/2)) / width``, clipped; MONOCHROME1 is the display-inverted image normalised."""
    hu = np.array([[-1000.0, -160.0, 40.0], [240.0, 1000.0, 3000.0]])
    np.testing.assert_allclose(intensity_map(hu, window=SOFT_TISSUE_WINDOW)(hu), [[0, 0, 0.5], [1, 1, 1]], atol=1e-7)
    stored = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.float64)
    display = stored.min() + stored.max() - stored
    np.testing.assert_allclose(
        intensity_map(stored, photometric="MONOCHROME1")(stored), intensity_map(display)(display), atol=1e-6
    )


def test_importing_the_normalisation_does_not_import_torch() -> None:
    """gan's public API is lazy: serving code can take the normalisation (numpy only) without torch."""
    code = "import sys; from gan import intensity_map, normalise_volume; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
