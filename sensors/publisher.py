"""Publishing the way devices do: one connection per device, logged in as that device.

:class:`DeviceFleet` opens one :class:`core.mqtt.MqttPublisher` (MQTT v5, QoS 1, bounded backlog) per device, with
the device's own credentials (the username is the device id), which is how the broker's per-device ACL is exercised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType

from pydantic import SecretStr

from core import MqttPublisher, MqttSettings, Refusal
from sensors.simulator import Outgoing


class DeviceFleet:
    """One :class:`MqttPublisher` per device, logged in as that device; routes each :class:`Outgoing` to it.

    ``cfg``: the broker (host, port, TLS, keepalive); ``credentials`` maps device ids to passwords (the username
    is the device id). For a broker without authentication pass ``devices`` instead. A fleet is callable, so it
    can be the ``publish_fn`` of :func:`sensors.simulator.run`.
    """

    def __init__(
        self,
        cfg: MqttSettings,
        credentials: Mapping[str, str] | None = None,
        devices: Iterable[str] | None = None,
        max_backlog: int = 1000,
        client_id_prefix: str = "",
    ) -> None:
        names = list(credentials) if credentials is not None else list(devices or [])
        if not names:
            raise ValueError("a fleet needs credentials or devices")
        self.publishers: dict[str, MqttPublisher] = {}
        try:
            for device_id in names:
                login = {"username": None, "password": None, "password_file": None}
                if credentials is not None:
                    login.update(username=device_id, password=SecretStr(credentials[device_id]))
                self.publishers[device_id] = MqttPublisher(
                    cfg.model_copy(update=login), f"{client_id_prefix}{device_id}", max_backlog=max_backlog
                )
        except BaseException:
            self.close(timeout=0)
            raise

    def __getitem__(self, device_id: str) -> MqttPublisher:
        return self.publishers[device_id]

    def publish(self, out: Outgoing, qos: int = 1) -> int:
        """Publish one simulated message on its device's own connection."""
        return self.publishers[out.device_id].publish(out.topic, out.payload, qos)

    __call__ = publish

    @property
    def refused(self) -> list[Refusal]:
        """Refusals of every device's connection."""
        return [r for p in self.publishers.values() for r in p.refused]

    @property
    def refused_count(self) -> int:
        """Number of refusals of every device's connection."""
        return sum(p.refused_count for p in self.publishers.values())

    @property
    def published(self) -> int:
        """Messages published by all devices."""
        return sum(p.published for p in self.publishers.values())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every device's messages are acknowledged (``timeout`` applies to each device)."""
        return all([p.flush(timeout) for p in self.publishers.values()])

    def close(self, timeout: float = 10.0) -> None:
        """Flush and disconnect every device."""
        for publisher in self.publishers.values():
            publisher.close(timeout)

    def __enter__(self) -> DeviceFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
