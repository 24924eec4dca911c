"""Checking produced DICOM with dicom3tools' ``dciodvfy`` (Debian ``dicom3tools``), the IOD validator.

dciodvfy prints one message per line, in these forms (seen in its output for valid, invalid, truncated and
garbage files)::

    Error - Missing attribute Type 1 Required Element=<Rows> Module=<ImagePixel>
    Warning - Value is zero for value 1 of attribute <Patient's Weight>
    Abort - File open for read failed - "/no/such/file"
    (0x0028,0x0010) US Rows Error - Tag read failed - Implicit VR encoding even though supposed to be explicit
    (0x0009,0x0010) LO PrivateCreator  - Error - Bad private owner value - element must be greater than ...
    (0xa0b1,0x0954)  ?  - Warning - Private tag without owner

plus the name of each IOD it checks (``CTImage``) and continuation lines of long values. It exits with status 1
when it found an error and 0 otherwise; it can also crash (an assertion on some inputs: killed by SIGABRT).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from aegle.localservices import require

# A message: optionally "(0xgggg,0xeeee) <VR> <name>" first, then the severity word followed by " - ". The lazy
# prefix stops at the first severity word, so a warning quoting "Error - " in its value stays a warning.
_MESSAGE = re.compile(r"^(?:\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\).*?\s)?(Error|Abort|Warning) - ")


def dciodvfy(path: str | Path) -> tuple[list[str], list[str]]:
    """``(errors, warnings)``: the messages ``dciodvfy`` reports for one file.

    Errors are every ``Error`` and ``Abort`` message, with or without a leading tag. A non-zero exit status without
    any such line (or a crash) is an error of its own, so a failed run can never look clean. Raises
    FileNotFoundError (naming the Debian package) when dciodvfy is not installed.
    """
    done = subprocess.run([require("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True,
                          errors="replace", timeout=120)  # fmt: skip
    errors: list[str] = []
    warnings: list[str] = []
    for line in (done.stdout + done.stderr).splitlines():
        found = _MESSAGE.match(line)
        if found:
            (warnings if found.group(1) == "Warning" else errors).append(line)
    if done.returncode < 0:
        errors.append(f"Abort - dciodvfy was killed by signal {-done.returncode}")
    elif done.returncode != 0 and not errors:
        errors.append(f"Error - dciodvfy exited with status {done.returncode} without naming an error")
    return errors, warnings
