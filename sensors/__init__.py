"""Bedside and wearable devices, simulated: patients' vitals over time (``simulator``) and a fleet of devices
publishing them to the broker, each as itself (``publisher``).

Other packages import only the names below (tests/test_layers.py checks it); each loads on first use.
"""

from __future__ import annotations

from core import lazy_exports

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "DeviceFleet": "sensors.publisher",
    "Faults": "sensors.simulator", "Simulator": "sensors.simulator", "run": "sensors.simulator",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
