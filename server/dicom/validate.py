"""Checking produced DICOM with dicom3tools' ``dciodvfy`` (Debian ``dicom3tools``), the IOD validator."""

from __future__ import annotations

import subprocess
from pathlib import Path

from server.localservices import require


def dciodvfy(path: str | Path) -> tuple[list[str], list[str]]:
    """``(errors, warnings)``: the lines ``dciodvfy`` reports for one file that start with Error / Warning.

    Raises FileNotFoundError (naming the Debian package) when dciodvfy is not installed.
    """
    done = subprocess.run([require("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    lines = (done.stdout + done.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]
