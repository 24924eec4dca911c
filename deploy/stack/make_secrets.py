"""Generate the single-box stack's secrets and broker accounts into a state directory (git-ignored).

Run by ``deploy/stack/up`` inside the Aegle image (``core.accounts`` is the one source of the broker policy), as
root, with the state directory mounted at ``/state``. Idempotent: existing passwords are kept, so a second ``up``
changes nothing; ``--rotate`` makes new ones (restart the stack afterwards). Writes:

* ``secrets/<container>/``: what each container mounts read-only at ``/run/secrets/aegle`` (its MQTT password,
  Orthanc's users, the PACS password, the API token secret), owned by that container's user, mode 0400;
* ``mosquitto/dynamic-security.json``: the broker's accounts (PBKDF2 hashes) and one role per account, from
  :func:`core.accounts.mosquitto_dynsec_config`;
* ``secrets/devices.json``: device id → password of the ward's devices (``aegle simulate --credentials``), root only;
* ``stack.json``: usernames, site and ports, no secrets.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path
from typing import Any

from core import accounts

#: Container users (the images' fixed uids).
AEGLE_UID, MOSQUITTO_UID, VM_UID, ORTHANC_UID = 10001, 10002, 10003, 10004
PACS_USER = "aegle"


def _secret(path: Path, rotate: bool, make: Any = lambda: secrets.token_urlsafe(24)) -> str:
    """The secret in ``path``, created (or replaced with ``rotate``) when missing."""
    if path.exists() and not rotate:
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = str(make())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return value


def _give(path: Path, uid: int, file_mode: int = 0o400, dir_mode: int = 0o500) -> None:
    """Hand ``path`` (a file, or a directory and its files) to ``uid`` with the given modes."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chown(p, uid, uid)
        p.chmod(dir_mode if p.is_dir() else file_mode)


def generate(state: Path, site: str, edge_id: str, devices: list[str], rotate: bool = False) -> dict[str, Any]:
    """Write every secret and the broker's account file under ``state``; returns the public description."""
    vault = state / "secrets"
    passwords = {
        name: _secret(vault / "mqtt" / name, rotate)
        for name in ["aegle-ingest", "aegle-server", accounts.BROKER_ADMIN, "aegle-dashboard", edge_id, *devices]
    }
    registered = [
        accounts.service("aegle-ingest"), accounts.service("aegle-server"), accounts.service(accounts.BROKER_ADMIN),
        accounts.service("aegle-dashboard"), accounts.edge(edge_id, site),
        *(accounts.device(d, site) for d in devices),
    ]  # fmt: skip
    pacs_password = _secret(vault / "pacs-password", rotate)
    token_secret = _secret(vault / "token-secret", rotate, lambda: secrets.token_hex(32))

    # Each container's own directory of secrets, mounted read-only at /run/secrets/aegle.
    per_container = {
        "server": {"mqtt-password": passwords["aegle-server"], "pacs-password": pacs_password,
                   "token-secret": token_secret},
        "ingest": {"mqtt-password": passwords["aegle-ingest"]},
        "edge": {"mqtt-password": passwords[edge_id]},
        "pacs": {"users.json": json.dumps({PACS_USER: pacs_password})},
    }  # fmt: skip
    for container, files in per_container.items():
        directory = vault / container
        directory.mkdir(parents=True, exist_ok=True)
        for name, value in files.items():
            (directory / name).write_text(value + "\n")
        _give(directory, ORTHANC_UID if container == "pacs" else AEGLE_UID)
    (vault / "devices.json").write_text(json.dumps({d: passwords[d] for d in devices}, indent=1) + "\n")
    (vault / "devices.json").chmod(0o600)

    broker = state / "mosquitto"
    broker.mkdir(parents=True, exist_ok=True)
    dynsec = broker / "dynamic-security.json"
    if rotate or not dynsec.exists():  # the plugin rewrites it as accounts are added at run time: keep it then
        tmp = dynsec.with_suffix(".tmp")
        tmp.write_text(json.dumps(accounts.mosquitto_dynsec_config(registered, passwords), indent=1))
        tmp.replace(dynsec)
    _give(broker, MOSQUITTO_UID, file_mode=0o600, dir_mode=0o700)

    # Writable state of each container (its volume).
    for name, uid in [("victoria-metrics", VM_UID), ("orthanc", ORTHANC_UID), ("server", AEGLE_UID),
                      ("ingest-1", AEGLE_UID), ("ingest-2", AEGLE_UID), ("edge", AEGLE_UID)]:  # fmt: skip
        (state / name).mkdir(parents=True, exist_ok=True)
        os.chown(state / name, uid, uid)
        (state / name).chmod(0o700)
    vault.chmod(0o711)
    (vault / "mqtt").chmod(0o700)
    description = {"site": site, "edge_id": edge_id, "devices": devices, "pacs_user": PACS_USER,
                   "mqtt_users": sorted(passwords)}  # fmt: skip
    (state / "stack.json").write_text(json.dumps(description, indent=1) + "\n")
    return description


def main() -> None:
    """Command line: ``secrets.py STATE [--site S] [--edge-id E] [--devices N] [--rotate]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state", type=Path)
    parser.add_argument("--site", default="ward-1")
    parser.add_argument("--edge-id", default="edge-1")
    parser.add_argument("--devices", type=int, default=4, help="bedside devices registered on the broker")
    parser.add_argument("--rotate", action="store_true", help="replace every existing secret")
    args = parser.parse_args()
    devices = [f"monitor-{i:02d}" for i in range(1, args.devices + 1)]
    print(json.dumps(generate(args.state, args.site, args.edge_id, devices, args.rotate)))


if __name__ == "__main__":
    main()
