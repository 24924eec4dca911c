"""core.logsafety: no DICOM header value reaches the log through third-party loggers or warnings; Aegle's own
messages pass unchanged. The leaks are real pydicom test files with real corruption, read by the real reader in a
process set up exactly like the CLIs (``configure_logging``)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pydicom
import pytest

from core.logsafety import ThirdPartyValuesFilter
from server.study import DicomInputError, read_instance
from tests.dicom_support import pydicom_file

ROOT = Path(__file__).resolve().parents[1]
RTPLAN = pydicom_file("rtplan.dcm")  # Implicit VR Little Endian, PatientName Last^First^mid^pre, PatientID id00001
NOT_A_UID = "Doe^Jane^private"


def rtplan_with_swallowing_uid() -> bytes:
    """rtplan.dcm with two bytes of SOPInstanceUID's length set to FF FF: the UID "value" swallows the rest of the
    header, patient name and id included."""
    raw = RTPLAN.read_bytes()
    length = raw.index(b"\x08\x00\x18\x00") + 4  # (0008,0018), implicit VR: a 4-byte length follows the tag
    return raw[:length] + b"\xff\xff" + raw[length + 2:]


def ct_with_text_in_a_uid() -> bytes:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the value it is asked to store
        ds.StudyInstanceUID = NOT_A_UID
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def header_secrets() -> list[str]:
    ds = pydicom.dcmread(RTPLAN)
    return [str(ds.PatientName), str(ds.PatientID), "Last^First", NOT_A_UID, "Doe^Jane"]


def test_the_corrupt_files_really_make_pydicom_quote_patient_data() -> None:
    """Without the filter, pydicom's warnings carry the values (so the test below can fail)."""
    seen = []
    for data in (rtplan_with_swallowing_uid(), ct_with_text_in_a_uid()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(DicomInputError) as refused:
                read_instance(data, max_pixels=4096 * 4096)
        seen += [str(w.message) for w in caught]
        assert not any(secret in refused.value.detail for secret in header_secrets())  # the refusal quotes none
    assert any("Last^First^mid^pre" in text for text in seen)
    assert any(NOT_A_UID in text for text in seen)


def test_a_cli_process_logs_no_header_values_and_its_own_messages_unchanged(tmp_path: Path) -> None:
    (tmp_path / "rtplan.dcm").write_bytes(rtplan_with_swallowing_uid())
    (tmp_path / "ct.dcm").write_bytes(ct_with_text_in_a_uid())
    script = textwrap.dedent(f"""
        import logging
        from pathlib import Path
        from server.study import DicomInputError, read_instance
        from core.logsafety import configure_logging

        configure_logging("debug")
        logging.getLogger("aegle.pipeline").info("series processed: status=%s uid=%s", "ok", "1.2.3.4")
        for name in ("rtplan.dcm", "ct.dcm"):
            try:
                read_instance(Path({str(tmp_path)!r}, name).read_bytes(), max_pixels=4096 * 4096)
            except DicomInputError as exc:
                logging.getLogger("aegle.api").warning("refused: %s", exc.reason)
        logging.getLogger("pydicom").error("value %s", "Last^First^mid^pre")
        try:
            try:
                raise ValueError("id00001")  # third-party text: withheld
            except ValueError as exc:
                from server.study import derived_series

                derived_series([None], [], scale=2, model_name="m", model_version="1", context=None,
                               description="d")  # Aegle's own ValueError: its message is kept
        except ValueError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=True)  # fmt: skip
    log = done.stderr
    for secret in header_secrets():
        assert secret not in log, f"{secret!r} reached the log:\n{log}"
    # not silenced: both of pydicom's channels still say that something was wrong, without the value
    assert "WARNING py.warnings: UserWarning at pydicom/valuerep.py:" in log
    assert "WARNING pydicom: message withheld" in log
    assert "ERROR pydicom: value %s [values withheld" in log  # a template without its argument
    # uvicorn's server log is trusted; the exception it carries keeps its frames, and only Aegle's own message
    assert "ERROR uvicorn.error: Exception in ASGI application\nTraceback (most recent call last):" in log
    assert "ValueError: <message withheld>" in log and "ValueError: 1 sources but 0 enhanced images" in log
    assert 'File "<string>", line' in log
    # Aegle's own messages pass unchanged
    assert "INFO aegle.pipeline: series processed: status=ok uid=1.2.3.4" in log
    assert log.count("WARNING aegle.api: refused: ") == 2
    assert "refused: bad-attribute" in log


def test_records_are_summarised_once_and_own_records_are_untouched() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.addFilter(ThirdPartyValuesFilter())
    second = logging.StreamHandler(stream)  # a record passes through every root handler: summarised only once
    second.addFilter(ThirdPartyValuesFilter())
    second.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger, own = logging.getLogger("pynetdicom.test"), logging.getLogger("aegle.test")
    for target in (logger, own):
        target.addHandler(handler)
        target.addHandler(second)
        target.propagate = False
    try:
        logger.warning("Received %s", "Doe^Jane")
        own.warning("patient-free text %s", "Doe^Jane kept: own loggers are trusted")
    finally:
        for target in (logger, own):
            target.removeHandler(handler)
            target.removeHandler(second)
            target.propagate = True
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("pynetdicom.test WARNING Received %s [values withheld; at tests/test_logsafety.py:")
    assert lines[1] == lines[0].replace(" WARNING", "", 1)
    assert lines[2:] == ["aegle.test WARNING patient-free text Doe^Jane kept: own loggers are trusted",
                         "aegle.test patient-free text Doe^Jane kept: own loggers are trusted"]
