"""Broker accounts and what each may publish and subscribe to: the one source of Aegle's broker policy.

Every MQTT login is an :class:`Account` with a :class:`Role`; :func:`grants` lists the topics it may publish on and
the filters it may subscribe to, and the broker refuses everything else (PUBACK / SUBACK reason code 0x87).

* device: publishes ``aegle/v1/{its site}/{its id}/vitals``; subscribes to nothing.
* edge: publishes ``aegle/v1/{its site}/{its id}/dicom/+/+`` and its own status
  ``aegle/v1/{its site}/status/edge/{its id}`` (its last will too); subscribes to nothing.
* ingest: subscribes to the vitals in a share group (``$share/+/aegle/v1/+/+/vitals``: its group is the setting
  ``ingest.share_group``, ``aegle-ingest`` by default), never without one; publishes dead letters, contexts and
  ingest statuses (``aegle/v1/+/status/ingest/+``).
* server: subscribes to ``aegle/v1/+/+/dicom/+/+``, to every status and to dead letters (the operator view);
  publishes results and dead letters.
* dashboard: subscribes to contexts, dead letters, results and statuses; publishes nothing.
* harness (tests and benchmarks only): publishes and subscribes to ``aegle/v1/#``, never to a ``$share`` group.
* broker-admin: publishes on ``$CONTROL/dynamic-security/v1`` and subscribes to its ``/response`` topic.

A subscribe grant also covers narrower filters (an ingest worker of one site subscribes
``$share/aegle-ingest/aegle/v1/ward-3/+/vitals``). Devices and edge nodes are registered with their site, so the
site is part of what they are granted; service accounts (:data:`SERVICE_ACCOUNTS`) serve every site.

Mosquitto enforces it through its dynamic-security plugin: :func:`mosquitto_dynsec_config` is the plugin's
configuration file and :func:`mosquitto_dynsec_commands` registers more accounts on a running broker (as the
broker-admin account, on the plugin's control topic). Mosquitto 2.0's ``acl_file`` cannot refuse a subscription:
it grants every SUBSCRIBE, ``$share`` ones included, and applies its read rules only when delivering, so a device
that joined the ingest share group made the broker hand it every second vitals message and drop them
(tests/test_broker_policy.py).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from core import topics

#: The broker settings every Aegle Mosquitto runs with (listener, paths and this plugin are added by whoever runs it).
MOSQUITTO_POLICY = Path(__file__).with_name("mosquitto-policy.conf")
DYNSEC_CONTROL = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE = f"{DYNSEC_CONTROL}/response"
#: What nobody is granted is refused: publishing, subscribing and receiving. Unsubscribing harms nothing.
DYNSEC_DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                         "unsubscribe": True}  # fmt: skip
#: PBKDF2-SHA512 iterations of the stored password hashes: the plugin's own default for the clients it creates.
DYNSEC_ITERATIONS = 101


class Role(StrEnum):
    """What an account is; :func:`grants` says what it may do."""

    DEVICE = "device"  # a bedside monitor or wearable
    EDGE = "edge"  # an edge node forwarding DICOM
    INGEST = "ingest"  # server.ingest workers
    SERVER = "server"  # server.service: DICOM assembler, result events, DICOM dead letters
    DASHBOARD = "dashboard"  # a read-only viewer (the demo's)
    HARNESS = "harness"  # tests and benchmarks that publish as any device and watch every topic; never in production
    BROKER_ADMIN = "broker-admin"  # registers accounts on a running broker


#: Roles whose accounts belong to one site.
SITE_ROLES = frozenset({Role.DEVICE, Role.EDGE})

BROKER_ADMIN = "aegle-broker-admin"
#: Service accounts by username; devices and edge nodes are registered with :func:`device` and :func:`edge`.
SERVICE_ACCOUNTS: dict[str, Role] = {
    "aegle-ingest": Role.INGEST,
    "aegle-server": Role.SERVER,
    "aegle-dashboard": Role.DASHBOARD,
    "aegle-test": Role.HARNESS,
    "aegle-bench": Role.HARNESS,
    BROKER_ADMIN: Role.BROKER_ADMIN,
}


@dataclass(frozen=True, slots=True)
class Account:
    """One MQTT username, its role and, for devices and edge nodes, its site."""

    username: str
    role: Role
    site: str | None = None

    def __post_init__(self) -> None:
        if self.role in SITE_ROLES:
            if self.site is None or not topics.is_segment(self.site) or not topics.is_segment(self.username):
                raise ValueError(f"a {self.role} account needs an id and a site that are topic segments, got "
                                 f"{self.username!r} at {self.site!r}")  # fmt: skip
        elif self.site is not None:
            raise ValueError(f"a {self.role} account serves every site; got site {self.site!r}")


@dataclass(frozen=True, slots=True)
class Grants:
    """Topics an account may publish on and topic filters it may subscribe to (and receive from)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def device(device_id: str, site: str) -> Account:
    """A device account: the username is the device id."""
    return Account(device_id, Role.DEVICE, site)


def edge(edge_id: str, site: str) -> Account:
    """An edge node account: the username is the edge id."""
    return Account(edge_id, Role.EDGE, site)


def service(username: str) -> Account:
    """The service account ``username`` (one of :data:`SERVICE_ACCOUNTS`)."""
    role = SERVICE_ACCOUNTS.get(username)
    if role is None:
        raise ValueError(
            f"{username!r} is not a service account ({', '.join(SERVICE_ACCOUNTS)}); register devices "
            "and edge nodes with their site: accounts.device(id, site), accounts.edge(id, site)"
        )
    return Account(username, role)


def grants(account: Account) -> Grants:
    """Everything ``account`` may publish and subscribe to; the broker refuses the rest."""
    deadletters, statuses = topics.deadletter_filter(), topics.status_filter()
    match account.role:
        case Role.DEVICE:
            return Grants((topics.vitals(str(account.site), account.username),), ())
        case Role.EDGE:
            site = str(account.site)
            return Grants((topics.dicom_filter(site, account.username), topics.edge_status(site, account.username)), ())
        case Role.INGEST:
            return Grants((deadletters, topics.context_filter(), topics.status_filter("ingest")),
                          (topics.shared_vitals_filter(group="+"),))  # fmt: skip
        case Role.SERVER:
            return Grants((topics.results_filter(), deadletters), (topics.dicom_filter(), statuses, deadletters))
        case Role.DASHBOARD:
            return Grants((), (topics.context_filter(), deadletters, topics.results_filter(), statuses))
        case Role.HARNESS:
            return Grants((f"{topics.PREFIX}/#",), (f"{topics.PREFIX}/#",))
        case Role.BROKER_ADMIN:
            return Grants((DYNSEC_CONTROL,), (DYNSEC_RESPONSE,))
    raise AssertionError(account.role)  # pragma: no cover - every role is matched above


def _delivered(topic_filter: str) -> str:
    """The topics a subscription delivers: a shared subscription's filter without ``$share/<group>/``."""
    return topic_filter.split("/", 2)[2] if topic_filter.startswith("$share/") else topic_filter


def dynsec_role(account: Account) -> dict[str, Any]:
    """The dynamic-security role holding exactly the grants of ``account`` (one role per account, same name)."""
    allowed = grants(account)
    acls = [{"acltype": "publishClientSend", "topic": t, "priority": 0, "allow": True} for t in allowed.publish]
    for topic_filter in allowed.subscribe:
        acls += [
            {"acltype": "subscribePattern", "topic": topic_filter, "priority": 0, "allow": True},
            {"acltype": "publishClientReceive", "topic": _delivered(topic_filter), "priority": 0, "allow": True},
        ]
    return {"rolename": account.username, "acls": acls}


def _password_hash(password: str) -> dict[str, Any]:
    """A password as the plugin stores it: PBKDF2-HMAC-SHA512 with a random salt, base64."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": DYNSEC_ITERATIONS}  # fmt: skip


def _client(account: Account) -> dict[str, Any]:
    """The plugin's client of ``account``: its username with its own role."""
    return {"username": account.username, "roles": [{"rolename": account.username}]}


def mosquitto_dynsec_config(accounts: Iterable[Account], passwords: Mapping[str, str]) -> dict[str, Any]:
    """The dynamic-security plugin's configuration file (``plugin_opt_config_file``) for these accounts."""
    accounts = list(accounts)
    return {
        "defaultACLAccess": DYNSEC_DEFAULT_ACCESS,
        "clients": [{**_client(a), **_password_hash(passwords[a.username])} for a in accounts],
        "groups": [],
        "roles": [dynsec_role(a) for a in accounts],
    }


def mosquitto_dynsec_commands(accounts: Iterable[Account], passwords: Mapping[str, str]) -> list[dict[str, Any]]:
    """Control commands (for ``$CONTROL/dynamic-security/v1``) that register new accounts on a running broker."""
    commands: list[dict[str, Any]] = []
    for a in accounts:
        commands += [
            {"command": "createRole", **dynsec_role(a)},
            {"command": "createClient", **_client(a), "password": passwords[a.username]},
        ]
    return commands
