"""The broker policy (core.accounts) on a real Mosquitto: what each kind of account may publish and subscribe to.

``MAY`` lists, per kind of account, the topics of ``TOPICS`` it may publish on and the filters of ``FILTERS`` it may
subscribe to; everything else in those lists must be refused with reason code 0x87 (MQTT v5 PUBACK at QoS 1,
SUBACK). The table is checked on a broker whose accounts were in its configuration file at start and on one that
got them through the dynamic-security control topic while running. An outside probe's finding is replayed: a device
in the ingest share group made half of all vitals vanish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from aegle.localservices import Mosquitto
from core import topics
from core.accounts import (
    SERVICE_ACCOUNTS,
    Account,
    Grants,
    Role,
    device,
    edge,
    grants,
    mosquitto_dynsec_config,
    service,
)
from core.mqtt import MqttPublisher, connect, disconnect, new_client, subscribe
from core.vitals import Observation, VitalsMessage
from server.ingest import IngestWorker
from server.store import open_store
from tests.support import ingest_settings, wait_for

TID = "0b9f6c1e-5d7a-4a53-9f0e-1f1a2b3c4d5e"
ACCOUNTS = {
    "device": device("mon-1", "ward-1"),
    "edge": edge("edge-1", "ward-1"),
    "ingest": service("aegle-ingest"),
    "server": service("aegle-server"),
    "dashboard": service("aegle-dashboard"),
    "harness": service("aegle-test"),
    "broker-admin": service("aegle-broker-admin"),
}
# What core.accounts grants, written out: a change to the policy has to change this table too.
GRANTS = {
    "device": Grants(("aegle/v1/ward-1/mon-1/vitals",), ()),
    "edge": Grants(("aegle/v1/ward-1/edge-1/dicom/+/+", "aegle/v1/ward-1/status/edge/edge-1"), ()),
    "ingest": Grants(("aegle/v1/+/deadletter/+", "aegle/v1/+/context/+", "aegle/v1/+/status/ingest/+"),
                     ("$share/+/aegle/v1/+/+/vitals",)),
    "server": Grants(("aegle/v1/+/results/+", "aegle/v1/+/deadletter/+"),
                     ("aegle/v1/+/+/dicom/+/+", "aegle/v1/+/status/+/+", "aegle/v1/+/deadletter/+")),
    "dashboard": Grants((), ("aegle/v1/+/context/+", "aegle/v1/+/deadletter/+", "aegle/v1/+/results/+",
                             "aegle/v1/+/status/+/+")),
    "harness": Grants(("aegle/v1/#",), ("aegle/v1/#",)),
    "broker-admin": Grants(("$CONTROL/dynamic-security/v1",), ("$CONTROL/dynamic-security/v1/response",)),
}
TOPICS = {  # name: topic, for publishing
    "own vitals": "aegle/v1/ward-1/mon-1/vitals",
    "own vitals at another site": "aegle/v1/ward-9/mon-1/vitals",
    "another device's vitals": "aegle/v1/ward-1/mon-2/vitals",
    "own DICOM manifest": f"aegle/v1/ward-1/edge-1/dicom/{TID}/manifest",
    "own DICOM chunk": f"aegle/v1/ward-1/edge-1/dicom/{TID}/0",
    "own DICOM chunk at another site": f"aegle/v1/ward-9/edge-1/dicom/{TID}/0",
    "another edge's DICOM chunk": f"aegle/v1/ward-1/edge-2/dicom/{TID}/0",
    "edge publishing vitals": "aegle/v1/ward-1/edge-1/vitals",
    "dead letter": "aegle/v1/ward-1/deadletter/invalid_field",
    "dead letter of an unknown site": "aegle/v1/unknown/deadletter/malformed_json",
    "context": "aegle/v1/ward-1/context/enc-1",
    "result": "aegle/v1/ward-1/results/1.2.840.10008.1",
    "own edge status": "aegle/v1/ward-1/status/edge/edge-1",
    "another edge's status": "aegle/v1/ward-1/status/edge/edge-2",
    "own edge status at another site": "aegle/v1/ward-9/status/edge/edge-1",
    "ingest status": "aegle/v1/_all/status/ingest/ingest-1",
    "other topic under aegle/v1": "aegle/v1/ward-1/mon-1/firmware",
    "broker control": "$CONTROL/dynamic-security/v1",
    "outside aegle/v1": "other/topic",
}
FILTERS = [
    "$share/aegle-ingest/aegle/v1/+/+/vitals",
    "$share/aegle-ingest/aegle/v1/ward-1/+/vitals",
    "$share/aegle-ingest/aegle/v1/#",
    "$share/other-group/aegle/v1/+/+/vitals",
    "aegle/v1/+/+/vitals",
    "aegle/v1/ward-1/mon-1/vitals",
    "aegle/v1/+/+/dicom/+/+",
    "aegle/v1/ward-1/+/dicom/+/+",
    "aegle/v1/+/context/+",
    "aegle/v1/ward-1/context/+",
    "aegle/v1/+/deadletter/+",
    "aegle/v1/+/results/+",
    "aegle/v1/+/status/+/+",
    "aegle/v1/+/status/edge/+",
    "aegle/v1/#",
    "#",
    "$SYS/#",
    "$CONTROL/dynamic-security/v1/response",
]
UNDER_AEGLE = [name for name, topic in TOPICS.items() if topic.startswith("aegle/v1/")]
MAY: dict[str, tuple[list[str], list[str]]] = {  # kind: (names of TOPICS it may publish on, FILTERS it may subscribe)
    "device": (["own vitals"], []),
    "edge": (["own DICOM manifest", "own DICOM chunk", "own edge status"], []),
    "ingest": (["dead letter", "dead letter of an unknown site", "context", "ingest status"],
               ["$share/aegle-ingest/aegle/v1/+/+/vitals", "$share/aegle-ingest/aegle/v1/ward-1/+/vitals",
                "$share/other-group/aegle/v1/+/+/vitals"]),
    "server": (["dead letter", "dead letter of an unknown site", "result"],
               ["aegle/v1/+/+/dicom/+/+", "aegle/v1/ward-1/+/dicom/+/+", "aegle/v1/+/deadletter/+",
                "aegle/v1/+/status/+/+", "aegle/v1/+/status/edge/+"]),
    "dashboard": ([], ["aegle/v1/+/context/+", "aegle/v1/ward-1/context/+", "aegle/v1/+/deadletter/+",
                       "aegle/v1/+/results/+", "aegle/v1/+/status/+/+", "aegle/v1/+/status/edge/+"]),
    "harness": (UNDER_AEGLE, [f for f in FILTERS if f.startswith("aegle/v1/")]),
    "broker-admin": (["broker control"], ["$CONTROL/dynamic-security/v1/response"]),
}  # fmt: skip


def test_grants_are_the_table_and_every_role_is_in_it() -> None:
    assert {kind: grants(account) for kind, account in ACCOUNTS.items()} == GRANTS
    assert {account.role for account in ACCOUNTS.values()} == set(Role)
    assert {name: Account(name, role) for name, role in SERVICE_ACCOUNTS.items()} == {
        name: service(name) for name in SERVICE_ACCOUNTS
    }


def test_device_and_edge_accounts_need_a_site_and_services_serve_every_site() -> None:
    for bad in (lambda: Account("mon-1", Role.DEVICE), lambda: device("mon-1", "ward/1"), lambda: edge("e+", "w"),
                lambda: Account("aegle-ingest", Role.INGEST, "ward-1"), lambda: service("mon-1")):  # fmt: skip
        with pytest.raises(ValueError):
            bad()


def test_the_generated_configuration_refuses_by_default_and_hashes_passwords() -> None:
    config = mosquitto_dynsec_config([ACCOUNTS["device"]], {"mon-1": "secret-password"})
    assert config["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                          "subscribe": False, "unsubscribe": True}  # fmt: skip
    [client] = config["clients"]
    assert "secret-password" not in str(config) and client["iterations"] >= 100


def suback(broker: Mosquitto, username: str, filters: list[str]) -> dict[str, int]:
    """The SUBACK reason code of each filter, subscribed to in one SUBSCRIBE."""
    cfg = broker.mqtt_settings(username)
    client = connect(new_client(cfg, f"{username}-sub-{time.monotonic_ns()}"), cfg)
    try:
        codes = subscribe(client, filters)
    finally:
        disconnect(client)
    return {f: code.value for f, code in zip(filters, codes, strict=True)}


@pytest.fixture(scope="module", params=["in the configuration file", "added while running"])
def policy_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker with one account of each kind, registered before it started or through its control topic."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto-policy"))
    if request.param == "in the configuration file":
        broker.add_accounts(ACCOUNTS.values())
    with broker:
        if request.param == "added while running":
            broker.add_accounts(a for a in ACCOUNTS.values() if a.username not in broker.users)
        yield broker


@pytest.mark.parametrize("kind", sorted(ACCOUNTS))
def test_each_account_may_publish_and_subscribe_to_exactly_its_grants(policy_broker: Mosquitto, kind: str) -> None:
    account = ACCOUNTS[kind]
    may_publish, may_subscribe = MAY[kind]
    login = policy_broker.mqtt_settings(account.username)
    with MqttPublisher(login, f"{account.username}-pub-{time.monotonic_ns()}") as pub:
        for topic in TOPICS.values():
            pub.publish(topic, b"{}")
        assert pub.flush(10)
        assert pub.acknowledged == len(TOPICS)
        refused = {r.topic: r.code for r in pub.refused}
    assert refused == {TOPICS[name]: 0x87 for name in TOPICS if name not in may_publish}
    codes = suback(policy_broker, account.username, FILTERS)
    assert {f: code for f, code in codes.items() if code >= 0x80} == {
        f: 0x87 for f in FILTERS if f not in may_subscribe
    }
    assert all(codes[f] == 1 for f in may_subscribe)  # granted at QoS 1


def test_a_username_is_registered_once_on_a_running_broker(policy_broker: Mosquitto) -> None:
    with pytest.raises(RuntimeError, match="refused to register accounts"):
        policy_broker.add_accounts([device("mon-1", "ward-9")])
    with MqttPublisher(policy_broker.mqtt_settings("mon-1"), "mon-1-again") as pub:
        pub.publish(topics.vitals("ward-9", "mon-1"), b"{}")
        assert pub.flush(10) and [r.code for r in pub.refused] == [0x87]  # still granted its own site only


def test_a_device_cannot_join_the_ingest_share_group(broker: Mosquitto, tmp_path: Path) -> None:
    """An outside probe: a device subscribed to the ingest share group, so the broker handed it every second vitals
    message and dropped them (50 of 100 stored, all 100 acknowledged). Now its SUBSCRIBE is refused and all
    100 are stored."""
    broker.add_accounts([device("mon-1", "ward-1")])
    settings = ingest_settings(broker, tmp_path, worker_id="probe")
    worker = IngestWorker(settings).start()
    login = broker.mqtt_settings("mon-1")
    intruder = new_client(login, "mon-1-intruder")
    stolen: list[mqtt.MQTTMessage] = []
    intruder.on_message = lambda _c, _u, message: stolen.append(message)
    connect(intruder, login)
    now = datetime.now(UTC)
    try:
        codes = subscribe(intruder, topics.shared_vitals_filter())
        assert [(c.value, str(c)) for c in codes] == [(0x87, "Not authorized")]
        with MqttPublisher(login, "mon-1") as pub:
            for i in range(100):
                message = VitalsMessage(message_id=f"probe-{i:04d}", site="ward-1", device_id="mon-1",
                                        patient_id="enc-probe", timestamp=now - timedelta(seconds=100 - i),
                                        observations=[Observation(code="8867-4", value=60 + i % 40, unit="/min")])
                pub.publish(topics.vitals("ward-1", "mon-1"), message.to_json())
            assert pub.flush(10) and pub.acknowledged == 100 and not pub.refused
        wait_for(lambda: worker.metrics.value("aegle_ingest_messages_total", outcome="accepted") >= 100, 20,
                 "all 100 messages accepted")
    finally:
        disconnect(intruder)
        worker.stop()
    store = open_store(settings.store)
    try:
        assert len(store.query("enc-probe", 0, int(now.timestamp() * 1000) + 1)) == 100
    finally:
        store.close()
    assert stolen == []
