"""Ingest rate against the raw MQTT rate on this machine, with the same publisher, in one run.

raw:    paho publisher → Mosquitto → paho subscriber process (QoS 1, counts messages)
ingest: paho publisher → Mosquitto → ``aegle ingest`` process (validate, write SQLite, acknowledge after commit),
        with one worker and with two workers on the shared subscription

The phases alternate ``--runs`` times on one broker with authentication on; figures are medians. After each
ingest phase the store is checked: every message exactly once (``lost`` and ``duplicated`` are totals).

    python -m bench.ingest            # 100 000 messages × 5 runs of each
    python -m bench.ingest --quick    # 30 000 messages × 3 runs (under a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from aegle import LOOPBACK, Mosquitto, free_port, http_ok
from core import (
    MqttPublisher,
    MqttSettings,
    Observation,
    VitalsMessage,
    connect,
    disconnect,
    new_client,
    subscribe,
    topics,
)
from server import row_counts

USERS = ("aegle-ingest", "aegle-bench")


def payloads(n: int, devices: int = 50) -> list[tuple[str, bytes]]:
    """``n`` realistic bedside-monitor messages (HR, SpO2, RR) from ``devices`` devices, distinct timestamps."""
    t0 = time.time() - n / 1000 - 120
    out = []
    for i in range(n):
        d = i % devices
        msg = VitalsMessage(
            message_id=f"bench-{i:09d}", site="ward-1", device_id=f"mon-{d}", patient_id=f"enc-{d}",
            timestamp=datetime.fromtimestamp(t0 + i / 1000, UTC),
            observations=[Observation(code="8867-4", value=60 + i % 50, unit="/min"),
                          Observation(code="59408-5", value=90 + i % 10, unit="%"),
                          Observation(code="9279-1", value=10 + i % 12, unit="/min")],
        )
        out.append((topics.vitals("ward-1", f"mon-{d}"), msg.to_json()))
    return out


def raw_subscriber(port: int, password: str, n: int) -> None:
    """Child process of the raw phase: subscribe at QoS 1, print the wall time when ``n`` messages arrived."""
    done = threading.Event()
    count = 0

    def on_message(_c: object, _u: object, _m: object) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    cfg = MqttSettings(host=LOOPBACK, port=port, username="aegle-bench", password=password)
    client = new_client(cfg, "bench-raw")
    client.on_message = on_message
    connect(client, cfg)
    subscribe(client, topics.vitals_filter())
    print("ready", flush=True)
    done.wait()
    print(f"{time.time():.6f}", flush=True)
    disconnect(client)


def publish_all(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> float:
    """Publish every message at QoS 1 with the bounded-backlog publisher; return the wall time it started."""
    pub = MqttPublisher(broker.mqtt_settings("aegle-bench"), "bench-pub", max_backlog=2000)
    started = time.time()
    for topic, payload in messages:
        pub.publish(topic, payload)
    pub.flush(120)
    pub.close()
    return started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU microseconds per message of the publisher (this process), the broker and the receiving processes."""

    def __init__(self, broker: Mosquitto, receivers: list[int]) -> None:
        assert broker.process is not None
        self.pids = {"publisher": os.getpid(), "broker": broker.process.pid}
        self.receivers = receivers
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        used["receiver"] = sum(cpu_seconds(pid) for pid in self.receivers)
        return used

    def per_message(self, n: int) -> dict[str, float]:
        end = self._read()
        return {name: (end[name] - self.start[name]) * 1e6 / n for name in end}


def run_raw(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> tuple[float, dict[str, float]]:
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest", "--raw-subscriber", str(broker.port), broker.users["aegle-bench"],
         str(len(messages))], stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"raw subscriber did not start: {line!r}, exit code {child.poll()}")
    meter = CpuMeter(broker, [child.pid])
    started = publish_all(broker, messages)
    finished = float(child.stdout.readline())
    cpu = meter.per_message(len(messages))
    child.wait(30)
    return len(messages) / (finished - started), cpu


ROWS_PER_MESSAGE = 3


def wait_stored(db: Path, messages: list[tuple[str, bytes]], timeout: float = 300) -> float:
    """Wall time at which the whole stream was in the store (last message seen, then the full count checked).

    Polls one primary-key lookup every 5 ms on a connection kept open, so the watcher (a thread of the
    publisher's process) costs the publisher almost nothing; the raw phase's subscriber reports by itself.
    """
    last = VitalsMessage.model_validate_json(messages[-1][1])
    key = (last.patient_id, int(last.timestamp.timestamp() * 1000))
    deadline = time.monotonic() + timeout
    with sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, timeout=30) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM vitals WHERE patient_id = ? AND t_ms = ?", key).fetchone():
                seen = time.time()
                if row_counts(db)[0] >= len(messages) * ROWS_PER_MESSAGE:
                    return seen
                time.sleep(0.05)  # a redelivered or second worker's batch is still on its way
            else:
                time.sleep(0.005)
    raise TimeoutError(f"stream not stored after {timeout:.0f} s: {row_counts(db)}")


def run_ingest(
    broker: Mosquitto, messages: list[tuple[str, bytes]], workdir: Path, run: int, workers: int
) -> tuple[float, dict[str, float], int, int]:
    """One ingest phase with ``workers`` worker processes; returns (msgs/s, CPU µs/msg, lost, duplicated)."""
    db = workdir / f"vitals-{run}-{workers}.sqlite"
    env = dict(os.environ)
    env.update({
        "AEGLE_MQTT__PORT": str(broker.port), "AEGLE_MQTT__USERNAME": "aegle-ingest",
        "AEGLE_MQTT__PASSWORD": broker.users["aegle-ingest"], "AEGLE_STORE__SQLITE_PATH": str(db),
        "AEGLE_LOG_LEVEL": "WARNING",
        # A fresh share group per phase, and sessions that end a second after the phase: otherwise the broker
        # keeps queueing a copy of every later phase's stream for the stopped workers' groups.
        "AEGLE_INGEST__SHARE_GROUP": f"bench-{run}-{workers}",
        "AEGLE_INGEST__SESSION_EXPIRY_S": "1",
    })
    ports = [free_port() for _ in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "aegle.cli", "ingest", "--worker-id", f"bench-{run}-{workers}-{i}",
             "--metrics-port", str(port)],
            env=env | {"AEGLE_INGEST__SPOOL_PATH": str(workdir / f"spool-{run}-{workers}-{i}.sqlite")},
        )
        for i, port in enumerate(ports)
    ]
    try:
        deadline = time.monotonic() + 30
        while not all(http_ok(f"http://{LOOPBACK}:{p}/metrics") for p in ports):  # metrics start once subscribed
            if time.monotonic() > deadline:
                raise TimeoutError("ingest workers did not subscribe")
            time.sleep(0.05)
        finished: list[float] = []
        watcher = threading.Thread(target=lambda: finished.append(wait_stored(db, messages)), daemon=True)
        watcher.start()
        meter = CpuMeter(broker, [p.pid for p in procs])
        started = publish_all(broker, messages)
        watcher.join(310)
        cpu = meter.per_message(len(messages))
        time.sleep(0.5)  # anything doubled would show now
        rows, distinct = row_counts(db)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    if not finished:
        raise RuntimeError("ingest did not finish")
    expected_rows = len(messages) * ROWS_PER_MESSAGE
    return len(messages) / (finished[0] - started), cpu, len(messages) - distinct, max(0, rows - expected_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 000 messages × 3 runs")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--raw-subscriber", nargs=3, metavar=("PORT", "PASSWORD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_subscriber:
        port, password, n = args.raw_subscriber
        raw_subscriber(int(port), password, int(n))
        return
    n = args.messages or (30_000 if args.quick else 100_000)
    runs = args.runs or (3 if args.quick else 5)
    load_before = os.getloadavg()[0]
    messages = payloads(n)
    rates: dict[str, list[float]] = {"raw": [], "ingest": [], "ingest_2w": []}
    cpu: dict[str, list[dict[str, float]]] = {k: [] for k in rates}
    lost = duplicated = 0
    with tempfile.TemporaryDirectory(prefix="aegle-bench-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto", service_users=USERS)
        broker.add_users(list(USERS))
        with broker:
            for run in range(runs):
                rate, used = run_raw(broker, messages)
                rates["raw"].append(rate)
                cpu["raw"].append(used)
                for key, workers in (("ingest", 1), ("ingest_2w", 2)):
                    rate, used, run_lost, run_dup = run_ingest(broker, messages, Path(tmp), run, workers)
                    rates[key].append(rate)
                    cpu[key].append(used)
                    lost += run_lost
                    duplicated += run_dup
                print(f"run {run + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:,.0f} msg/s" for k, v in rates.items()),
                      file=sys.stderr)
    median = {k: statistics.median(v) for k, v in rates.items()}
    cpu_median = {
        k: {name: round(statistics.median(run[name] for run in v), 1) for name in v[0]} for k, v in cpu.items()
    }
    print(json.dumps({
        "bench": "ingest", "messages": n, "runs": runs, "qos": 1, "store": "sqlite",
        "raw_msgs_per_s": round(median["raw"]),
        "ingest_msgs_per_s": round(median["ingest"]),
        "ratio": round(median["ingest"] / median["raw"], 3),
        "ingest_2_workers_msgs_per_s": round(median["ingest_2w"]),
        "ratio_2_workers": round(median["ingest_2w"] / median["raw"], 3),
        "lost": lost, "duplicated": duplicated,
        "runs_msgs_per_s": {k: [round(x) for x in v] for k, v in rates.items()},
        # Process CPU time per message (median over runs), meaningful even on a busy machine where the rates
        # are not: the worker against the raw subscriber it has to keep up with.
        "worker_cpu_us_per_msg": cpu_median["ingest"]["receiver"],
        "raw_subscriber_cpu_us_per_msg": cpu_median["raw"]["receiver"],
        # "receiver" is the raw subscriber or the ingest worker(s).
        "cpu_us_per_msg": cpu_median,
        # 1-minute load average before and after (2 cores here): above ~2 the rates are contended.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
