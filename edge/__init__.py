"""The edge node of a ward or imaging room: a DICOM C-STORE SCP that checks what it accepts (``scp``), a durable
outbox (``outbox``) and a forwarder that sends each instance in chunks over MQTT (``forwarder``), wired by
``node``; ``python -m edge`` or ``aegle edge`` runs one (``cli``).

Other packages import only the names below (tests/test_layers.py checks it); each loads on first use.
"""

from __future__ import annotations

from core import lazy_exports

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "add_arguments": "edge.cli", "settings_from": "edge.cli",
    "EdgeNode": "edge.node",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
