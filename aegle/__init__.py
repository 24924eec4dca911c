"""The front door: the ``aegle`` command (``cli``), the end-to-end demo (``demo``), and the harness that starts
real Mosquitto, VictoriaMetrics and Orthanc on loopback for the demo, the tests and the benchmarks
(``localservices``, ``dicomcheck``). It wires the other packages; none of them imports it.

Other packages import only the names below (tests/test_layers.py checks it); each loads on first use.
"""

from __future__ import annotations

from core import lazy_exports

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "LOOPBACK": "aegle.localservices", "LocalService": "aegle.localservices", "Mosquitto": "aegle.localservices",
    "Orthanc": "aegle.localservices", "free_port": "aegle.localservices", "http_ok": "aegle.localservices",
    "loopback_only_network": "aegle.localservices", "c_store": "aegle.demo",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
