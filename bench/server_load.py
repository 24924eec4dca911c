"""Server throughput under concurrent clients, with and without micro-batching, and its memory, in one run.

Two phases on fresh ``aegle serve`` child processes (same settings otherwise, shipped weights): micro-batching on
(``max_batch`` 8, ``max_wait_ms`` 5 — the service defaults) and off (``max_batch`` 1). Before each phase every
model the service has is loaded: the enhancer and the triage classifier at start-up, the hybrid GAN by one
``/api/v1/synthesize``, and one ``/api/v1/classify`` runs. Then ``--clients`` threads (one keep-alive HTTP
connection each) post plain-image enhance requests back to back for ``--seconds``: real 256 × 256 MR slices
(all axial slices of pyradiomics 3.0.1's T1 brain MR ``brain1`` and ``brain2``, native 256 × 256, uint16 NPY).

Figures per phase: completed requests per second (``rps``), p50/p95 latency of the completed ones, 503
answers (back-pressure: each must carry ``Retry-After``; the client waits that long, or to the end of the
phase, before its next request), other errors, and the CPU split — cores used by the service, by this client
process, and the machine's load average. ``rss_mb`` is the service's peak resident memory (``VmHWM`` from
``/proc/<pid>/status``) over both phases, with all models loaded; the goal is ≤ 1 GB (1024 MiB).

    python -m bench.server_load             # 16 clients, 30 s per phase
    python -m bench.server_load --quick     # 8 clients, 8 s per phase (under a minute once the ONNX cache exists)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._service import AegleService, brain_mr, metric_delta, missing_models, percentile

ENHANCE = "/api/v1/enhance"
RSS_GOAL_MB = 1024.0
PHASES = {"batched": {"max_batch": 8, "max_wait_ms": 5.0}, "unbatched": {"max_batch": 1, "max_wait_ms": 0.0}}
MR_CASES = ("pyradiomics:brain1", "pyradiomics:brain2")


def mr_slices() -> list[bytes]:
    """Every axial slice of the two pyradiomics brain MRs (256 × 256, stored values as uint16) as NPY bytes."""
    out = []
    for volume, _spacing in brain_mr(*MR_CASES).values():
        for plane in volume:
            buffer = io.BytesIO()
            np.save(buffer, plane)
            out.append(buffer.getvalue())
    return out


class Client(threading.Thread):
    """One client: posts the slices in turn until ``deadline`` and records latencies and refusals."""

    def __init__(self, service: AegleService, slices: list[bytes], offset: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url = f"{service.url}{ENHANCE}"
        self.headers = service.auth() | {"Content-Type": "application/x-npy"}
        self.slices, self.offset, self.deadline = slices, offset, deadline
        self.latencies: list[float] = []
        self.refused = 0  # 503 with Retry-After
        self.refused_without_retry_after = 0
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        with httpx.Client(timeout=120) as http:
            i = self.offset
            while (now := time.perf_counter()) < self.deadline:
                body = self.slices[i % len(self.slices)]
                i += 1
                try:
                    answer = http.post(self.url, content=body, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                    time.sleep(0.1)  # a dead or restarting service: do not spin
                    continue
                if answer.status_code == 200:
                    self.latencies.append(time.perf_counter() - now)
                elif answer.status_code == 503 and answer.headers.get("Retry-After", "").isdigit():
                    self.refused += 1
                    time.sleep(max(0.0, min(float(answer.headers["Retry-After"]), self.deadline - time.perf_counter())))
                else:
                    if answer.status_code == 503:
                        self.refused_without_retry_after += 1
                    key = f"HTTP {answer.status_code}"
                    self.errors[key] = self.errors.get(key, 0) + 1


def load_every_model(service: AegleService, sample: bytes) -> list[str]:
    """Run the hybrid GAN and the classifier once, so that every model the service has is in memory; returns
    the models loaded on demand (the hybrid GAN, when its weights are there)."""
    with httpx.Client(timeout=300, headers=service.auth()) as http:
        synth = http.post(f"{service.url}/api/v1/synthesize", params={"label": 1, "seed": 0})
        http.post(f"{service.url}/api/v1/classify", content=sample, headers={"Content-Type": "application/x-npy"})
    return ["hybrid-gan"] if synth.status_code == 200 else []


def phase(workdir: Path, name: str, inference: dict[str, Any], slices: list[bytes], clients: int,
          seconds: float) -> dict[str, Any]:  # fmt: skip
    """One service process, warmed up, under ``clients`` concurrent clients for ``seconds``."""
    service = AegleService(workdir / name, inference=inference)
    with service:
        models = service.models()
        extra = load_every_model(service, slices[0])
        warm = Client(service, slices, 0, time.perf_counter() + 1.0)  # first request per shape pays extra
        warm.start()
        warm.join()
        before = service.metrics()
        start_wall, start_cpu, start_own = time.perf_counter(), service.cpu_seconds(), time.process_time()
        deadline = start_wall + seconds
        threads = [Client(service, slices, k * 7, deadline) for k in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 180)
        wall = time.perf_counter() - start_wall
        service_cpu, client_cpu = service.cpu_seconds() - start_cpu, time.process_time() - start_own
        after = service.metrics()
        memory = service.memory_mb()
    latencies = [x for t in threads for x in t.latencies]
    errors: dict[str, int] = {}
    for thread in threads:
        for key, count in thread.errors.items():
            errors[key] = errors.get(key, 0) + count
    batches = metric_delta(before, after, "aegle_inference_batch_size_count", model="enhancer-x2")
    items = metric_delta(before, after, "aegle_inference_batch_size_sum", model="enhancer-x2")
    done = len(latencies)
    return {
        "rps": round(done / wall, 2),
        "requests": done,
        "p50_s": round(statistics.median(latencies), 4) if latencies else None,
        "p95_s": round(percentile(latencies, 95), 4) if latencies else None,
        "refused_503": sum(t.refused for t in threads),
        "refused_503_without_retry_after": sum(t.refused_without_retry_after for t in threads),
        "errors": errors,
        "mean_enhancer_batch": round(items / batches, 2) if batches else None,
        # CPU time per completed request and cores used on average during the phase.
        "service_cpu_ms_per_request": round(service_cpu * 1000 / done, 1) if done else None,
        "service_cores": round(service_cpu / wall, 2),
        "client_cores": round(client_cpu / wall, 2),
        "rss_mb": memory["VmHWM"],
        "models": sorted(m["name"] for m in models.get("models", [])) + extra,
        "missing_models": missing_models(models),
        "seconds": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clients, 8 s per phase")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 16, 8 with --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="per phase (default 30, 8 with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads of the service (default: the service's default, all cores)")
    parser.add_argument("--queue-max", type=int, default=None,
                        help="the service's inference queue bound (default: the service's, 64); below --clients "
                             "it shows back-pressure (503 + Retry-After)")
    parser.add_argument("--weights", default=None, help="registry root (default: the shipped gan/weights)")
    parser.add_argument("--cache-dir", default="var/model-cache", help="ONNX cache of the service")
    args = parser.parse_args()
    clients = args.clients or (8 if args.quick else 16)
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    common: dict[str, Any] = {"cache_dir": args.cache_dir}
    for key, value in (("threads", args.threads), ("queue_max", args.queue_max), ("weights_dir", args.weights)):
        if value:
            common[key] = value
    load_before = os.getloadavg()[0]
    slices = mr_slices()
    results = {}
    with tempfile.TemporaryDirectory(prefix="aegle-bench-") as tmp:
        for name, batching in PHASES.items():
            results[name] = phase(Path(tmp), name, common | batching, slices, clients, seconds)
            r = results[name]
            print(f"{name}: {r['rps']} req/s, p50 {r['p50_s']} s, p95 {r['p95_s']} s, 503s {r['refused_503']}, "
                  f"errors {r['errors']}, service {r['service_cores']} cores, client {r['client_cores']} cores, "
                  f"peak RSS {r['rss_mb']} MiB", file=sys.stderr)  # fmt: skip
    batched, unbatched = results["batched"], results["unbatched"]
    rss = max(batched["rss_mb"], unbatched["rss_mb"])
    print(json.dumps({
        "bench": "server_load", "clients": clients, "seconds_per_phase": seconds,
        "body": "256x256 uint16 NPY, real MR (pyradiomics brain1 + brain2)",
        "rps_batched": batched["rps"], "rps_unbatched": unbatched["rps"],
        "ratio_batched_to_unbatched": round(batched["rps"] / unbatched["rps"], 3) if unbatched["rps"] else None,
        "p50_s_batched": batched["p50_s"], "p95_s_batched": batched["p95_s"],
        "p50_s_unbatched": unbatched["p50_s"], "p95_s_unbatched": unbatched["p95_s"],
        "refused_503": batched["refused_503"] + unbatched["refused_503"],
        "refused_503_without_retry_after": batched["refused_503_without_retry_after"]
        + unbatched["refused_503_without_retry_after"],
        "errors": sum(sum(r["errors"].values()) for r in results.values()),
        "rss_mb": rss, "rss_goal_mb": RSS_GOAL_MB, "rss_goal_met": rss <= RSS_GOAL_MB,
        "phases": results,
        "threads": args.threads, "queue_max": args.queue_max,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
