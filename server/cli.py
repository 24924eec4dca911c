"""The ``aegle`` command line: one entry point for operators.

Every subcommand reads the one :class:`~server.settings.Settings` object (``AEGLE_*`` environment variables,
``AEGLE_CONFIG`` TOML file); flags override the settings they name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from server.settings import Settings


def _moment(text: str) -> datetime:
    """An ISO 8601 time; a naive one is refused rather than guessed."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (add Z or +01:00)")
    return value.astimezone(UTC)


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    """Run one ingest worker until SIGTERM."""
    from server.ingest import IngestWorker

    if args.worker_id:
        settings.ingest.worker_id = args.worker_id
    if args.metrics_port is not None:
        settings.ingest.metrics_port = args.metrics_port
    worker = IngestWorker(settings)
    if args.retire:
        worker.retire()
    else:
        worker.run_forever()
    return 0


def cmd_context(settings: Settings, args: argparse.Namespace) -> int:
    """Print a patient's sensor context at a time (default: now) from the store."""
    from sensors.context import context_at
    from server.store import open_store

    store = open_store(settings.store)
    try:
        ctx = context_at(
            store, args.patient, args.at or datetime.now(UTC), settings.context.window_s,
            settings.context.freshness_tau_s,
        )
    finally:
        store.close()
    print(json.dumps(ctx.to_dict(), indent=2))
    return 0


def cmd_vitals(settings: Settings, args: argparse.Namespace) -> int:
    """Print a patient's stored vitals between two times as JSON lines."""
    from sensors.vitals import from_ms, to_ms
    from server.store import open_store

    end = args.end or datetime.now(UTC)
    start = args.start or end - timedelta(hours=1)
    store = open_store(settings.store)
    try:
        for s in store.query(args.patient, to_ms(start), to_ms(end)):
            print(json.dumps({"t": from_ms(s.t_ms).isoformat(), "device_id": s.device_id, "code": s.code,
                              "value": s.value}))
    finally:
        store.close()
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Publish simulated devices' vitals to the configured broker in real time."""
    from sensors.publisher import DeviceFleet
    from sensors.simulator import Simulator, run

    credentials = json.loads(Path(args.credentials).read_text()) if args.credentials else {}
    sim = Simulator(patients=args.patients, site=args.site, rate_hz=args.rate, seed=args.seed)
    with DeviceFleet(settings.mqtt.host, settings.mqtt.port, credentials) as fleet:
        run(sim, fleet.publish, args.duration, realtime=True)
    return 0


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    """Train a model family (``aegle train enhancer --help`` lists the options)."""
    from gan.train import main as train_main

    return train_main([args.family, *args.options])


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """End-to-end demo on embedded defaults."""
    from server.demo import run_demo

    return run_demo(duration_s=args.duration, patients=args.patients, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="aegle", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default from settings)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the end-to-end demo on embedded defaults")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of simulated monitoring (default 30)")
    p.add_argument("--patients", type=int, default=6)
    p.add_argument("--workdir", default="var/demo", help="where the demo keeps its broker and store files")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ingest", help="run an ingest worker (MQTT → store → live context)")
    p.add_argument("--worker-id", default=None, help="fixed id; the MQTT client id and session derive from it")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--retire", action="store_true",
                   help="drain this worker's queued share, leave the shared subscription and end its session")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("simulate", help="publish simulated bedside and wearable devices")
    p.add_argument("--patients", type=int, default=4)
    p.add_argument("--rate", type=float, default=1.0, help="messages per device per second")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--site", default="ward-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--credentials", default=None, help="JSON file mapping device id to MQTT password")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a model family on the packaged real images (see docs/training.md)",
                       add_help=False)
    p.add_argument("family", choices=["enhancer"], help="enhancer (hybrid-gan and classifier: not yet)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of python -m gan.train FAMILY")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("context", help="a patient's sensor context now or at --at, from the store")
    p.add_argument("patient")
    p.add_argument("--at", type=_moment, default=None, help="ISO 8601 time with offset, e.g. 2026-11-21T10:00Z")
    p.set_defaults(func=cmd_context)

    p = sub.add_parser("vitals", help="a patient's stored vitals between --from and --to")
    p.add_argument("patient")
    p.add_argument("--from", dest="start", type=_moment, default=None, help="default: an hour before --to")
    p.add_argument("--to", dest="end", type=_moment, default=None, help="default: now")
    p.set_defaults(func=cmd_vitals)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aegle`` console script."""
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=(args.log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    return func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
