"""Logging setup for every Aegle process, and the one filter that keeps third-party log text out of the logs.

Libraries that read DICOM put header values into their messages: pydicom warns (``warnings.warn``) *and* logs
(logger ``pydicom``) e.g. ``Invalid value for VR UI: '<whatever the element held>'`` — on a corrupt file that is
any neighbouring bytes, patient name and id included. Aegle's own loggers (``aegle`` and below) are written to
carry counts, UIDs and reasons only; other text is not trusted. :class:`ThirdPartyValuesFilter` rewrites every
record from another logger before any handler formats it:

* kept: logger name and level (the format prints them) and the code location that logged;
* warnings (``py.warnings``, through :func:`logging.captureWarnings`): the warning category and the file:line that
  warned, not the text;
* other loggers: the message *template* when the library passed its values as arguments (``log.info("x %s",
  value)``: the template is a constant of the library's code), never the arguments; a message without arguments
  (an f-string, or pydicom's pre-formatted warnings) is withheld entirely. :data:`TRUSTED` loggers keep their text
  and arguments;
* an attached exception: the traceback (code locations only) and the exception types; the message only of
  exceptions raised by Aegle's own packages (:data:`OWN_PACKAGES`), which follow the same rules as its logs.
"""

from __future__ import annotations

import logging
import re
import traceback

OWN_NAMESPACE = "aegle"
OWN_PACKAGES = frozenset({"server", "edge", "sensors", "gan", "bench"})
#: Third-party loggers kept as they are: uvicorn's server life cycle (start, stop, startup failures), which sees no
#: DICOM data. Its request log (``uvicorn.access``) is not trusted.
TRUSTED = frozenset({"uvicorn.error"})
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# warnings.formatwarning: "<file>:<line>: <Category>: <message>\n". The lazy file part stops at the first
# ":<digits>: <Identifier>: ", which is the one formatwarning wrote before the (untrusted) message.
_WARNING = re.compile(r"(?P<file>[^\n]*?):(?P<line>\d+): (?P<category>[A-Za-z_][A-Za-z0-9_]*): ")
_SUMMARISED = "_aegle_summarised"


def _is_own(name: str) -> bool:
    return name == OWN_NAMESPACE or name.startswith(OWN_NAMESPACE + ".")


def _short_path(path: str) -> str:
    """The last two components of a source path (``pydicom/valuerep.py``): where, without the install prefix."""
    return "/".join(path.replace("\\", "/").split("/")[-2:])


def _raised_by_own_code(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc``'s traceback is in one of Aegle's packages."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module.split(".")[0] in OWN_PACKAGES


def safe_traceback(exc: BaseException) -> str:
    """``exc`` and its causes like a traceback, but with the message of every exception not raised by Aegle's own
    code replaced by ``<message withheld>`` (frames are code locations and source lines only: no values)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    parts = []
    for link in reversed(chain):
        message = str(link) if _raised_by_own_code(link) else "<message withheld>"
        frames = "".join(traceback.format_tb(link.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{type(link).__qualname__}: {message}")
    return "\n\nThe above exception led to the following one:\n\n".join(parts)


class ThirdPartyValuesFilter(logging.Filter):
    """Rewrites records of loggers outside ``aegle`` so they carry no values (see the module docstring).

    The record is changed in place (every handler sees the same text) and only once. Always returns True: the
    record is kept, only its text changes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_own(record.name) or getattr(record, _SUMMARISED, False):
            return True
        if record.name not in TRUSTED:
            record.msg, record.args = self._summary(record), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = safe_traceback(record.exc_info[1])  # formatters print exc_text as it is
        record.exc_info, record.stack_info = None, None
        setattr(record, _SUMMARISED, True)
        return True

    @staticmethod
    def _summary(record: logging.LogRecord) -> str:
        if record.name == "py.warnings":
            text = record.args[0] if isinstance(record.args, tuple) and record.args else record.msg
            found = _WARNING.match(str(text))
            if found:
                return (f"{found['category']} at {_short_path(found['file'])}:{found['line']} "
                        "(warning text withheld: it may quote DICOM header values)")  # fmt: skip
            return "warning (text withheld: it may quote DICOM header values)"
        where = f"{_short_path(record.pathname)}:{record.lineno}"
        if record.args and isinstance(record.msg, str):
            return f"{record.msg} [values withheld; at {where}]"
        return f"message withheld (third-party text may quote DICOM header values; at {where})"


def configure_logging(level: str) -> None:
    """Set up logging for an Aegle process: ``basicConfig`` with the project's format at ``level``, warnings
    routed into logging, and :class:`ThirdPartyValuesFilter` on every root handler."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ThirdPartyValuesFilter) for f in handler.filters):
            handler.addFilter(ThirdPartyValuesFilter())
