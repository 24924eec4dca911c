"""The ward view under a ward's load: publish-to-page latency, dropped frames, server CPU, page weight, first render.

Real components on loopback: Mosquitto with authentication and the per-device ACL, the ``aegle ingest`` worker
(a child process) writing the SQLite vitals store, ``aegle serve`` (a child process, no models: the dashboard does
not use them) and Debian's Chromium driven by Playwright. ``--patients`` simulated patients (``sensors``: a bedside
monitor and a wearable each, both publishing every second as themselves) run for the whole bench.

1. Warm-up (every patient in the store), then ``--baseline-seconds`` with no page open: the service's CPU
   without the push path (the ward feed runs only while a page is open, so it is idle).
2. A logged-in page opens ``/dashboard/ward`` (cold: the feed starts for it). ``first_render_s``: navigation
   start to the animation frame after the table has a row for every patient; ``first_row_s`` the same for the
   first row.
3. ``--seconds`` with the page open. Every sample published (patient, channel, timestamp) is stamped with its
   publish wall time; an init script in the page stamps when a row showing that sample (the cell's ``data-t`` is
   the sample's timestamp) enters the table, and the animation frame after it. ``vitals_to_page_*``: publish →
   that frame, for samples published in the window. A sample never shown because a newer one of its channel
   replaced it first (heart rate comes from two devices; the feed reads the store every 0.5 s and shows the newest
   value) is *superseded*; one never shown with nothing newer shown is *missing*. A ``requestAnimationFrame``
   loop records every frame: ``dropped_frames`` are the frames the window should have held at the median frame
   interval but did not; a gap above 1.5 × that interval is a janky gap. ``server_to_page_*``: the feed's read
   of the store (``now_ms`` of each patient event) → the page's handler receiving it. CPU of the service, ingest
   worker, broker and Chromium's processes (% of one core), with the page and in the baseline.
4. ``--reloads`` reloads of the page (the feed running): ``first_render_warm_p50_s``.

Same machine, so the bench's and the page's wall clocks are one clock.

    python -m bench.dashboard            # 100 patients, 60 s with the page, 60 s baseline
    python -m bench.dashboard --quick    # 20 patients, 15 s with the page, 10 s baseline (under a minute)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aegle import LOOPBACK, Mosquitto, free_port, http_ok
from bench._service import AegleService, percentile, run_isolated
from bench.ingest import cpu_seconds

CHROMIUM = "/usr/bin/chromium"
SITE = "ward-bench"
#: Published sample → (patient, channel, timestamp ms).
Key = tuple[str, str, int]

#: Runs in the page before its own scripts. Records: every animation frame (``frames``, performance.now() ms);
#: for each (patient, channel, sample time) the first time a table row showing it was inserted (``shown``) and the
#: animation frame after that (``painted``); first row and all rows (DOM and frame); Server-Sent Event counts and
#: the size of each whole-ward event; long tasks. Observes the rows and value cells the page inserts (a new row, or
#: a cell replaced in an existing row), not text changes, so the page's per-second age updates cost it nothing.
PAGE_HOOKS = r"""
(() => {
  const EXPECTED = %(patients)d;
  const b = window.__bench = {
    origin: performance.timeOrigin, frames: [], shown: {}, painted: {}, firstRow: null, firstRowPaint: null,
    allRows: null, allRowsPaint: null, events: 0, eventChars: 0, snapshots: [], opens: 0, longTasks: [], delivery: [],
  };
  const loop = () => { b.frames.push(performance.now()); requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
  let pending = [], scheduled = false;
  const paint = () => {
    const now = performance.now();
    for (const key of pending) b.painted[key] = now;
    pending = [];
    scheduled = false;
    if (b.firstRow !== null && b.firstRowPaint === null) b.firstRowPaint = now;
    if (b.allRows !== null && b.allRowsPaint === null) b.allRowsPaint = now;
  };
  let observer = null;
  const onRows = (records) => {
    const now = performance.now();
    const seen = (patient, td) => {
      const key = `${patient}|${td.dataset.channel}|${td.dataset.t}`;
      if (!(key in b.shown)) { b.shown[key] = now; pending.push(key); }
    };
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (node.nodeType !== 1) continue;
        if (node.dataset.patient) {
          observer.observe(node, { childList: true });  // its cells, replaced in place when a value changes
          for (const td of node.querySelectorAll("td.v[data-t]")) seen(node.dataset.patient, td);
        } else if (node.matches("td.v[data-t]") && node.parentElement && node.parentElement.dataset.patient) {
          seen(node.parentElement.dataset.patient, node);
        }
      }
    }
    const body = document.getElementById("ward-body");
    if (b.firstRow === null && body.children.length > 0) b.firstRow = now;
    if (b.allRows === null && body.children.length >= EXPECTED) b.allRows = now;
    if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
  };
  observer = new MutationObserver(onRows);
  document.addEventListener("DOMContentLoaded", () => {
    observer.observe(document.getElementById("ward-body"), { childList: true });
  });
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      b.opens += 1;
      this.addEventListener("message", (m) => {
        b.events += 1;
        b.eventChars += m.data.length;
        if (m.data.startsWith('{"type":"ward"')) b.snapshots.push(m.data.length);
        const sent = /^\{"type":"patients","now_ms":(\d+)/.exec(m.data);
        if (sent) b.delivery.push([Date.now(), Date.now() - Number(sent[1])]);
      });
    }
  };
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) b.longTasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (e) { /* no long-task timing */ }
})();
"""

#: The page's first load: every response but the event stream (still open), with its sizes.
PAGE_WEIGHT_JS = """() => [performance.getEntriesByType("navigation")[0], ...performance.getEntriesByType("resource")]
  .filter((e) => !e.name.includes("/events"))
  .map((e) => ({name: new URL(e.name).pathname, type: e.initiatorType, transfer: e.transferSize,
                body: e.encodedBodySize, decoded: e.decodedBodySize}))"""

COUNTERS_JS = "() => ({events: window.__bench.events, chars: window.__bench.eventChars, opens: window.__bench.opens})"


def proc_children() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/*/stat``."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(entry.name))
    return children


def browser_pids(root: int) -> list[int]:
    """Chromium's processes among the descendants of ``root`` (the Playwright driver is left out)."""
    children, out, todo = proc_children(), [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                if "chromium" in os.readlink(f"/proc/{child}/exe"):
                    out.append(child)
            except OSError:
                continue
    return out


class CpuMeter:
    """CPU seconds of named processes (and of Chromium's, found anew at each read) between :meth:`start` and
    :meth:`stop`; processes that end in between lose their share (none should)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.started: dict[str, dict[int, float]] = {}
        self.wall = 0.0

    def _read(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, pid in {**self.pids, **{f"browser:{p}": p for p in browser_pids(os.getpid())}}.items():
            try:
                out.setdefault(name.split(":")[0], {})[pid] = cpu_seconds(pid)
            except OSError:
                continue
        return out

    def start(self) -> None:
        """Begin a span."""
        self.started, self.wall = self._read(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """Per name, percent of one core used since :meth:`start`."""
        end, wall = self._read(), time.monotonic() - self.wall
        return {name: round(100 * sum(t - self.started.get(name, {}).get(pid, 0.0) for pid, t in used.items()) / wall,
                            1) for name, used in end.items()}  # fmt: skip


class Publisher:
    """The simulated ward, publishing as its devices; remembers when each (patient, channel, time) was published."""

    def __init__(self, broker: Mosquitto, patients: int, rate_hz: float) -> None:
        from core import accounts
        from sensors import Faults, Simulator

        self.sim = Simulator(patients=patients, site=SITE, rate_hz=rate_hz, seed=7, faults=Faults(),
                             patient_prefix="enc-bench")  # fmt: skip
        self.credentials = broker.add_accounts([accounts.device(d, SITE) for d in self.sim.devices])
        self.broker = broker
        self.published: dict[Key, float] = {}
        self.lag: list[tuple[float, float]] = []  # (publish wall time, publish − sample time)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.fleet: Any = None

    def start(self) -> None:
        """Connect every device and start publishing in a thread (until :meth:`stop`)."""
        from core import BY_CODE, CHANNELS
        from sensors import DeviceFleet, run

        self.fleet = DeviceFleet(self.broker.mqtt_settings(), self.credentials)
        channel_of = {code: sign.key for code, sign in BY_CODE.items() if sign.key in CHANNELS}

        def publish(out: Any) -> None:
            at = time.time()
            self.fleet.publish(out)
            body = json.loads(out.payload)
            t_ms = round(out.timestamp.timestamp() * 1000)
            self.lag.append((at, at - t_ms / 1000))
            for obs in body["observations"]:
                channel = channel_of.get(obs["code"])
                if channel is not None:
                    self.published.setdefault((body["patient_id"], channel, t_ms), at)

        self.thread = threading.Thread(target=run, args=(self.sim, publish, float("inf")),
                                       kwargs={"realtime": True, "stop": self.stop_event,
                                               "start": datetime.now(UTC)}, daemon=True)  # fmt: skip
        self.thread.start()

    def stop(self) -> None:
        """Stop publishing and disconnect the devices."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(30)
        if self.fleet is not None:
            self.fleet.close(5)


def start_ingest(broker: Mosquitto, store: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """``aegle ingest`` as a child process writing ``store``; returns once it has subscribed."""
    port = free_port()
    env = dict(os.environ) | {
        "AEGLE_MQTT__HOST": LOOPBACK, "AEGLE_MQTT__PORT": str(broker.port), "AEGLE_MQTT__USERNAME": "aegle-ingest",
        "AEGLE_MQTT__PASSWORD": broker.users["aegle-ingest"], "AEGLE_STORE__BACKEND": "sqlite",
        "AEGLE_STORE__SQLITE_PATH": str(store), "AEGLE_INGEST__SPOOL_PATH": str(workdir / "spool.sqlite"),
        "AEGLE_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    log = (workdir / "ingest.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "aegle.cli", "ingest", "--worker-id", "bench-dashboard",
                             "--metrics-port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while not http_ok(f"http://{LOOPBACK}:{port}/metrics"):  # metrics start once subscribed
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"ingest worker did not start: {(workdir / 'ingest.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def start_service(workdir: Path) -> AegleService:
    """``aegle serve`` on the same store, without models, with a clinician token (``tokens["clinician"]``)."""
    from core import ApiSettings
    from server import TokenStore

    service = AegleService(workdir, inference={"weights_dir": workdir / "no-models", "threads": 1})
    store = TokenStore.from_settings(ApiSettings(tokens_path=workdir / "tokens.sqlite",
                                                 token_secret_file=workdir / "token-secret"))  # fmt: skip
    try:
        service.tokens = {role: store.create(f"bench-{role}", role) for role in ("operator", "device", "clinician")}
    finally:
        store.close()
    return service.start(timeout=120)


def wait_page(page: Any, predicate: str, timeout_s: float) -> None:
    """Poll ``predicate`` (a JS function) in the page until true. Not ``page.wait_for_function``: that evaluates
    strings, which the dashboard's Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not reach {predicate} in {timeout_s:.0f} s")
        time.sleep(0.05)


def wait_render(page: Any, timeout_s: float) -> dict[str, Any]:
    """Wait for every patient's row to be painted; the page's render figures (seconds from navigation start)."""
    wait_page(page, "() => Boolean(window.__bench) && window.__bench.allRowsPaint !== null", timeout_s)
    got = page.evaluate("""() => { const b = window.__bench;
        const fcp = performance.getEntriesByName("first-contentful-paint")[0];
        return {first_row: b.firstRowPaint, all_rows: b.allRowsPaint, all_rows_dom: b.allRows,
                fcp: fcp ? fcp.startTime : null, snapshot_chars: b.snapshots[0] || null}; }""")
    return {k: (round(v / 1000, 3) if isinstance(v, float | int) and k != "snapshot_chars" else v)
            for k, v in got.items()}  # fmt: skip


def frame_figures(frames: list[float], start_ms: float, end_ms: float) -> dict[str, Any]:
    """Animation frames (performance.now() ms) in a window → median interval, frames the window should have held
    at that interval but did not (``dropped_frames``), janky gaps (> 1.5 × median, the window's edges counting as
    frames), gaps over 50 ms and the longest."""
    inside = [f for f in frames if start_ms <= f <= end_ms]
    intervals = [b - a for a, b in itertools.pairwise(inside)]
    median = statistics.median(intervals) if len(intervals) >= 10 else 1000 / 60
    gaps = [b - a for a, b in itertools.pairwise([start_ms, *inside, end_ms])]
    expected = (end_ms - start_ms) / median
    dropped = max(0, round(expected) - len(inside))
    return {"frames": len(inside), "frames_expected": round(expected), "frame_interval_ms": round(median, 2),
            "dropped_frames": dropped, "dropped_frame_share": round(dropped / expected, 4) if expected else None,
            "janky_gaps": sum(g > 1.5 * median for g in gaps), "gaps_over_50ms": sum(g > 50 for g in gaps),
            "longest_gap_ms": round(max(gaps), 1)}  # fmt: skip


def match(published: dict[Key, float], shown: dict[Key, float], t0: float, t1: float) -> dict[str, Any]:
    """Latency publish → page for the samples published in [t0, t1]; superseded and missing ones counted."""
    newest_shown: dict[tuple[str, str], int] = {}
    for patient, channel, t_ms in shown:
        key = (patient, channel)
        newest_shown[key] = max(newest_shown.get(key, t_ms), t_ms)
    latencies, superseded, missing = [], 0, 0
    for (patient, channel, t_ms), at in published.items():
        if not t0 <= at <= t1:
            continue
        # The store keeps milliseconds; a rounding step on the way may move a timestamp by 1 ms.
        seen = next((shown[k] for d in (0, -1, 1) if (k := (patient, channel, t_ms + d)) in shown), None)
        if seen is not None:
            latencies.append(seen - at)
        elif newest_shown.get((patient, channel), -1) > t_ms:
            superseded += 1
        else:
            missing += 1
    published_n = len(latencies) + superseded + missing
    return {
        "samples_published": published_n, "samples_matched": len(latencies),
        "samples_superseded": superseded, "samples_missing": missing,
        "vitals_to_page_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "vitals_to_page_p95_s": round(percentile(latencies, 95), 3) if latencies else None,
        "vitals_to_page_max_s": round(max(latencies), 3) if latencies else None,
        "vitals_to_page_min_s": round(min(latencies), 3) if latencies else None,
    }  # fmt: skip


def page_keys(stamps: dict[str, float], origin_ms: float) -> dict[Key, float]:
    """The page's ``"patient|channel|t"`` → performance.now() ms, as (patient, channel, t) → wall seconds."""
    out: dict[Key, float] = {}
    for key, at in stamps.items():
        patient, channel, t = key.rsplit("|", 2)
        out[(patient, channel, int(t))] = (origin_ms + at) / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 patients, 15 s with the page, 10 s baseline")
    parser.add_argument("--patients", type=int, default=None, help="simulated patients (default 100, 20 --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="with the page open (default 60, 15 --quick)")
    parser.add_argument("--baseline-seconds", type=float, default=None,
                        help="no page open, before it opens (default: --seconds; 10 --quick)")
    parser.add_argument("--rate", type=float, default=1.0, help="samples per second per device (default 1)")
    parser.add_argument("--reloads", type=int, default=None, help="warm reloads (default 5, 3 --quick)")
    args = parser.parse_args()
    network = run_isolated("bench.dashboard")
    patients = args.patients or (20 if args.quick else 100)
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    baseline_s = args.baseline_seconds or (10.0 if args.quick else seconds)
    reloads = args.reloads if args.reloads is not None else (3 if args.quick else 5)
    tail_s = 3.0
    load_before = os.getloadavg()[0]
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: Debian's chromium is needed (scripts/setup installs it)")
    from playwright.sync_api import sync_playwright

    def say(text: str) -> None:
        print(f"bench.dashboard: {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="aegle-bench-") as tmp:
        work = Path(tmp)
        (work / "serve").mkdir()
        broker = Mosquitto(work / "mosquitto", service_users=("aegle-ingest",))
        publisher = Publisher(broker, patients, args.rate)
        with broker:
            ingest = start_ingest(broker, work / "serve" / "vitals.sqlite", work)
            service: AegleService | None = None
            try:
                service = start_service(work / "serve")
                publisher.start()
                say(f"{patients} patients × 2 devices publishing; service {service.url}")
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(executable_path=CHROMIUM)
                    context = browser.new_context(viewport={"width": 1280, "height": 800})
                    login = context.request.post(f"{service.url}/dashboard/login", max_redirects=0,
                                                 form={"token": service.tokens["clinician"]},
                                                 headers={"Origin": service.url})  # fmt: skip
                    if login.status != 303:
                        raise RuntimeError(f"dashboard login refused: HTTP {login.status}")
                    context.add_init_script(PAGE_HOOKS % {"patients": patients})
                    time.sleep(3.0)  # every device has published at least twice
                    meter = CpuMeter({"service": service.pid, "ingest": ingest.pid,
                                      "broker": broker.process.pid if broker.process else 0,
                                      "bench": os.getpid()})  # fmt: skip
                    say(f"baseline: {baseline_s:.0f} s with no page open")
                    meter.start()
                    time.sleep(baseline_s)
                    cpu_no_page = meter.stop()
                    say("opening the ward view")
                    page = context.new_page()
                    page.goto(f"{service.url}/dashboard/ward", wait_until="commit")
                    cold = wait_render(page, 60)
                    weight = page.evaluate(PAGE_WEIGHT_JS)
                    wait_page(page, "() => document.getElementById('status').textContent === 'Live'", 30)
                    time.sleep(1.0)
                    say(f"first render {cold['all_rows']} s; {seconds:.0f} s with the page open")
                    before = page.evaluate(COUNTERS_JS)
                    t0 = time.time()
                    meter.start()
                    time.sleep(seconds)
                    cpu_page = meter.stop()
                    t1 = time.time()
                    after = page.evaluate(COUNTERS_JS)
                    time.sleep(tail_s)  # samples published near the end reach the page
                    data = page.evaluate("""() => { const b = window.__bench;
                        return {origin: b.origin, frames: b.frames, painted: b.painted, shown: b.shown,
                                longTasks: b.longTasks, delivery: b.delivery}; }""")
                    warm = []
                    for i in range(reloads):
                        page.reload(wait_until="commit")
                        warm.append(wait_render(page, 60))
                        say(f"reload {i + 1}/{reloads}: all rows after {warm[-1]['all_rows']} s")
                    context.close()
                    browser.close()
            finally:
                publisher.stop()
                if service is not None:
                    service.stop()
                ingest.terminate()
                ingest.wait(30)
    origin = data["origin"]
    painted = page_keys(data["painted"], origin)
    latency = match(publisher.published, painted, t0, t1)
    dom = match(publisher.published, page_keys(data["shown"], origin), t0, t1)
    window_ms = ((t0 * 1000 - origin), (t1 * 1000 - origin))
    frames = frame_figures(data["frames"], *window_ms)
    delivery = [d / 1000 for at, d in data["delivery"] if t0 * 1000 <= at <= t1 * 1000]
    long_tasks = [(s, d) for s, d in data["longTasks"] if window_ms[0] <= s <= window_ms[1]]
    lag = [d for at, d in publisher.lag if t0 <= at <= t1]
    events = after["events"] - before["events"]
    push_cpu = round(cpu_page.get("service", 0.0) - cpu_no_page.get("service", 0.0), 1)
    weight_bytes = sum(int(e["transfer"]) for e in weight)
    result = {
        "bench": "dashboard", "patients": patients, "devices": 2 * patients, "rate_hz": args.rate,
        "seconds": seconds, "baseline_seconds": baseline_s,
        **latency,
        "vitals_to_page_dom_p50_s": dom["vitals_to_page_p50_s"],
        "vitals_to_page_dom_p95_s": dom["vitals_to_page_p95_s"],
        "goal_p95_s": 1.0, "goal_p95_met": latency["vitals_to_page_p95_s"] is not None
        and latency["vitals_to_page_p95_s"] <= 1.0,
        "server_to_page_p50_s": round(statistics.median(delivery), 3) if delivery else None,
        "server_to_page_p95_s": round(percentile(delivery, 95), 3) if delivery else None,
        "publish_lag_p95_s": round(percentile(lag, 95), 3) if lag else None,
        "first_render_s": cold["all_rows"], "first_row_s": cold["first_row"],
        "first_contentful_paint_s": cold["fcp"],
        "first_render_warm_p50_s": round(statistics.median(w["all_rows"] for w in warm), 3) if warm else None,
        "first_render_warm_s": [w["all_rows"] for w in warm],
        "goal_first_render_s": 1.0, "goal_first_render_met": cold["all_rows"] <= 1.0,
        **frames,
        "long_tasks": len(long_tasks), "long_task_ms": round(sum(d for _, d in long_tasks), 1),
        "server_cpu_percent_page": cpu_page.get("service"), "server_cpu_percent_no_page": cpu_no_page.get("service"),
        "push_path_cpu_percent": push_cpu,
        "push_path_cpu_ms_per_event": round(push_cpu * 10 * seconds / events, 3) if events else None,
        "cpu_percent_page": cpu_page, "cpu_percent_no_page": cpu_no_page,
        "page_weight_bytes": weight_bytes, "page_weight": weight,
        "ward_snapshot_bytes": cold["snapshot_chars"],
        "sse_events": events, "sse_events_per_s": round(events / seconds, 1),
        "sse_bytes_per_s": round((after["chars"] - before["chars"]) / seconds),
        "stream_opens": after["opens"] - before["opens"],
        "browser": f"Debian chromium ({CHROMIUM}), headless, Playwright", "models": "none (not used by the dashboard)",
        "network": network, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }  # fmt: skip
    say(f"publish → page p50 {result['vitals_to_page_p50_s']} s, p95 {result['vitals_to_page_p95_s']} s "
        f"({latency['samples_matched']} matched, {latency['samples_superseded']} superseded, "
        f"{latency['samples_missing']} missing); first render {result['first_render_s']} s; dropped frames "
        f"{frames['dropped_frames']} of {frames['frames_expected']}; service CPU {cpu_page.get('service')} % "
        f"with the page, {cpu_no_page.get('service')} % without")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
