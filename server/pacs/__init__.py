"""The PACS side: a DICOMweb client (STOW-RS, WADO-RS, QIDO-RS) and the Orthanc watch mode."""

from server.pacs.dicomweb import DicomWebStore
from server.pacs.errors import PacsError
from server.pacs.watch import OrthancWatcher, watcher_for

__all__ = ["DicomWebStore", "OrthancWatcher", "PacsError", "watcher_for"]
