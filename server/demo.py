"""``aegle demo``: the whole vitals path on embedded defaults, shown live in the terminal.

Starts a real Mosquitto (authentication and ACL on, one login per simulated device), an ingest worker writing
to SQLite, and a ward of simulated devices with the faults real ones have (late, duplicated and invalid
messages, dropouts). A viewer subscribed to the retained context topics prints every patient's live sensor
context as it updates. At the end it reads the context at an earlier time back from the store.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from sensors import topics
from sensors.context import SensorContext, context_at
from sensors.publisher import DeviceFleet
from sensors.simulator import Faults, Simulator, run
from server.ingest import IngestWorker
from server.localservices import LOOPBACK, Mosquitto
from server.settings import ContextSettings, IngestSettings, MqttSettings, Settings, StoreSettings
from server.store import open_store

SITE = "ward-1"
COLUMNS = (
    ("heart_rate", "HR /min", "{:.0f}"),
    ("spo2", "SpO2 %", "{:.0f}"),
    ("temperature", "Temp °C", "{:.1f}"),
    ("respiratory_rate", "RR /min", "{:.0f}"),
    ("systolic_bp", "SBP", "{:.0f}"),
    ("diastolic_bp", "DBP", "{:.0f}"),
    ("motion", "motion m/s²", "{:.2f}"),
)


class ContextViewer:
    """Subscribes to every patient's retained context topic and dead letters, as a dashboard would."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.contexts: dict[str, SensorContext] = {}
        self.deadletters: dict[str, int] = {}
        self.updates = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="aegle-demo-viewer",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port)
        self.client.subscribe([(topics.context_filter(SITE), 1), (topics.deadletter(SITE, "+"), 1)])
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if "/deadletter/" in msg.topic:
                reason = msg.topic.rsplit("/", 1)[1]
                self.deadletters[reason] = self.deadletters.get(reason, 0) + 1
                return
            ctx = SensorContext.from_dict(json.loads(msg.payload))
            self.contexts[ctx.patient_id] = ctx
            self.updates += 1

    def table(self) -> str:
        """The live context of every patient as a text table."""
        with self._lock:
            contexts = dict(sorted(self.contexts.items()))
            letters = dict(self.deadletters)
        head = f"{'patient':<10}" + "".join(f"{title:>12}" for _, title, _ in COLUMNS) + f"{'complete':>10}{'at':>11}"
        rows = [head, "-" * len(head)]
        for patient, ctx in contexts.items():
            cells = []
            for key, _, fmt in COLUMNS:
                value = ctx.levels.get(key)
                cells.append(f"{fmt.format(value) if value is not None else '–':>12}")
            rows.append(f"{patient:<10}{''.join(cells)}{ctx.completeness:>10.0%}{ctx.at.strftime('%H:%M:%S'):>11}")
        rows.append(f"context updates: {self.updates}   dead letters: {letters or 'none'}")
        return "\n".join(rows)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_demo(duration_s: float = 30.0, patients: int = 6, workdir: str | Path = "var/demo") -> int:
    """Run the demo for ``duration_s`` seconds; returns a process exit code."""
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # each run starts clean, so running it twice is safe
    sim = Simulator(
        patients=patients, site=SITE, rate_hz=1.0, seed=int(time.time()) % 10_000,
        faults=Faults(dropouts_per_hour=30, late_fraction=0.03, duplicate_fraction=0.03, bad_fraction=0.01),
    )
    broker = Mosquitto(workdir / "mosquitto", service_users=("aegle-ingest", "aegle-dashboard"))
    service = broker.add_users(["aegle-ingest", "aegle-dashboard"])
    credentials = broker.add_users(list(sim.devices))
    settings = Settings(
        mqtt=MqttSettings(host=LOOPBACK, port=broker.port, username="aegle-ingest", password=service["aegle-ingest"]),
        store=StoreSettings(backend="sqlite", sqlite_path=workdir / "vitals.sqlite"),
        ingest=IngestSettings(worker_id="demo", spool_path=workdir / "spool.sqlite"),
        context=ContextSettings(window_s=60, freshness_tau_s=30),
    )
    tty = sys.stdout.isatty()
    print(f"Aegle demo: Mosquitto on {LOOPBACK}:{broker.port} (auth + ACL), SQLite store in {workdir}/, "
          f"{patients} patients × 2 devices for {duration_s:.0f} s")
    with broker:
        worker = IngestWorker(settings).start()
        viewer = ContextViewer(broker.port, "aegle-dashboard", service["aegle-dashboard"])
        stop = threading.Event()
        started = datetime.now(UTC)
        with DeviceFleet(LOOPBACK, broker.port, credentials) as fleet:
            devices = threading.Thread(target=run, args=(sim, fleet.publish, duration_s),
                                       kwargs={"realtime": True, "stop": stop, "start": started}, daemon=True)
            devices.start()
            try:
                last_print = 0.0
                while devices.is_alive():
                    devices.join(1.0)
                    if tty:
                        print("\x1b[2J\x1b[H" + viewer.table(), flush=True)
                    elif time.monotonic() - last_print >= 5:
                        print(viewer.table(), "\n", flush=True)
                        last_print = time.monotonic()
            except KeyboardInterrupt:
                stop.set()
                devices.join()
            fleet.flush(10)
        time.sleep(settings.ingest.context_publish_interval_s + 0.5)
        worker.stop()
        print(viewer.table())
        viewer.close()
        accepted = worker.metrics.value("aegle_ingest_messages_total", outcome="accepted")
        rejected = worker.metrics.value("aegle_ingest_messages_total", outcome="rejected")
        written = worker.metrics.value("aegle_ingest_samples_written_total")
        print(f"\ningested {accepted:.0f} messages ({written:.0f} samples), dead-lettered {rejected:.0f}")
        store = open_store(settings.store)
        halfway = started + timedelta(seconds=duration_s / 2)
        patient = sim.patients[0].patient_id
        ctx = context_at(store, patient, halfway, settings.context.window_s, settings.context.freshness_tau_s)
        print(f"context of {patient} at {halfway:%H:%M:%S} read back from the store: "
              + ", ".join(f"{k}={v}" for k, v in ctx.levels.items() if v is not None))
        store.close()
    return 0 if accepted > 0 and viewer.contexts else 1
