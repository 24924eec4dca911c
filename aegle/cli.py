"""The ``aegle`` command line: one entry point for operators.

Every subcommand reads the one :class:`~core.settings.Settings` object (``AEGLE_*`` environment variables,
``AEGLE_CONFIG`` TOML file); flags override the settings they name.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aegle.enhance import parse_vitals
from core import Settings, configure_logging
from edge import add_arguments as add_edge_arguments
from gan import TRAINERS

if TYPE_CHECKING:
    from aegle.stores import VitalsReader

#: ``aegle train FAMILY`` (gan.TRAINERS): one line each for ``aegle train --help``.
TRAIN_FAMILIES = {
    "enhancer": "the context-conditioned enhancer (python -m gan.train enhancer)",
    "classifier": "the SE-CNN classifiers: triage | lesion, or calibrate (python -m gan.train_classifier)",
    "hybrid-gan": "the hybrid GAN's three stages (python -m gan.train_hybrid)",
}


def _moment(text: str) -> datetime:
    """An ISO 8601 time; a naive one is refused rather than guessed."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (add Z or +01:00)")
    return value.astimezone(UTC)


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    """Run one ingest worker until SIGTERM."""
    from server import IngestWorker

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


def _open_store(settings: Settings) -> VitalsReader | None:
    """The configured vitals store, named on stderr; None (after saying why) when it does not exist or answer."""
    from aegle.stores import StoreMissing, describe, open_existing

    try:
        store = open_existing(settings.store)
    except StoreMissing as exc:
        print(f"aegle: {exc}", file=sys.stderr)
        return None
    print(f"reading {describe(settings.store)}", file=sys.stderr)
    return store


def cmd_context(settings: Settings, args: argparse.Namespace) -> int:
    """Print a patient's sensor context at a time (default: now) from the store, with each channel's code, name and
    unit."""
    from aegle.stores import CHANNEL_SIGNS
    from core import CHANNELS, context_at

    store = _open_store(settings)
    if store is None:
        return 1
    try:
        ctx = context_at(
            store, args.patient, args.at or datetime.now(UTC), settings.context.window_s,
            settings.context.freshness_tau_s,
        )
    finally:
        store.close()
    channels = {c: {"code": CHANNEL_SIGNS[c].code, "name": CHANNEL_SIGNS[c].display, "unit": CHANNEL_SIGNS[c].unit}
                for c in CHANNELS}  # fmt: skip
    print(json.dumps(ctx.to_dict() | {"channels": channels}, indent=2))
    return 0


def cmd_vitals(settings: Settings, args: argparse.Namespace) -> int:
    """Print a patient's stored vitals between two times as JSON lines, each code with its name and unit."""
    from core import BY_CODE, from_ms, to_ms

    end = args.end or datetime.now(UTC)
    start = args.start or end - timedelta(hours=1)
    store = _open_store(settings)
    if store is None:
        return 1
    try:
        for s in store.query(args.patient, to_ms(start), to_ms(end)):
            sign = BY_CODE.get(s.code)
            print(json.dumps({"t": from_ms(s.t_ms).isoformat(), "device_id": s.device_id, "code": s.code,
                              "name": sign.display if sign else None, "unit": sign.unit if sign else None,
                              "value": s.value}))
    finally:
        store.close()
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Publish simulated devices' vitals to the configured broker in real time."""
    from sensors import DeviceFleet, Simulator, run

    credentials = json.loads(Path(args.credentials).read_text()) if args.credentials else {}
    sim = Simulator(patients=args.patients, site=args.site, rate_hz=args.rate, seed=args.seed)
    with DeviceFleet(settings.mqtt, credentials) as fleet:
        run(sim, fleet.publish, args.duration, realtime=True)
    return 0


#: The program name a trainer's own parser prints (``python -m gan.train enhancer``, ``python -m
#: gan.train_classifier [calibrate]``, ``python -m gan.train_hybrid``): ``aegle train FAMILY`` shows its own.
_TRAINER_PROG = re.compile(r"python -m gan\.train(?:_classifier|_hybrid)?(?: enhancer)?")


class _Renamed(io.TextIOBase):
    """A text stream that writes the trainer's ``python -m`` name as ``aegle train FAMILY`` (help and usage)."""

    def __init__(self, target: TextIO, family: str) -> None:
        self.target, self.name = target, f"aegle train {family}"

    def write(self, text: str) -> int:
        self.target.write(_TRAINER_PROG.sub(self.name, text))
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    """Train a model family (``aegle train FAMILY --help`` lists its options), as its ``python -m`` command does;
    its help, usage and option errors name this command instead of the trainer's ``python -m`` one."""
    from gan import run_trainer

    with (contextlib.redirect_stdout(_Renamed(sys.stdout, args.family)),
          contextlib.redirect_stderr(_Renamed(sys.stderr, args.family))):  # fmt: skip
        return run_trainer(args.family, args.options)


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    """``list`` (also plain ``aegle models``): one JSON line per configured model (role, settings name and version,
    the input paths it serves, registry version, sha256); exit 1 if a model some path uses is not servable as
    configured. ``show NAME``: a registry model's whole card (versions, sha256, metrics, training) and the roles
    it is served in."""
    from server import registry_report

    report = registry_report(settings.inference)
    if args.action == "show":
        return _show_model(settings, args.name, report)
    for entry in report:
        print(json.dumps(entry))
    return 0 if all(e["status"] == "ok" for e in report if e["paths"]) else 1


def _show_model(settings: Settings, name: str, report: list[dict[str, Any]]) -> int:
    from gan import CARD_FILE, DEFAULT_ROOT, RegistryError, list_models, load_card

    root = Path(settings.inference.weights_dir or DEFAULT_ROOT)
    try:
        card = load_card(root / name / CARD_FILE)
    except (RegistryError, OSError) as exc:
        held = ", ".join(c.name for c in list_models(root)) or "nothing"
        print(f"aegle models show: no model {name!r} in the registry {root} ({exc}); it holds: {held}",
              file=sys.stderr)
        return 1
    served = [{k: e[k] for k in ("role", "version", "paths", "status")} for e in report if e["name"] == name]
    print(json.dumps(card.model_dump(mode="json") | {"registry": str(root), "served_as": served}, indent=2))
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Export a registry model to ONNX (dynamic batch and size, parity-checked), or compile it with TensorRT."""
    from gan import load_model, tensorrt_unavailable_reason
    from server import INPUTS, OnnxBackend

    root = args.weights or settings.inference.weights_dir
    model, card = load_model(root, args.name)
    if card.architecture not in INPUTS:
        print(f"{card.name}: architecture {card.architecture!r} is not exportable ({sorted(INPUTS)})", file=sys.stderr)
        return 2
    if args.tensorrt:
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            print(f"TensorRT export is not possible here: {reason}", file=sys.stderr)
            return 2
        import numpy as np

        from server import TensorRTBackend

        inputs = [np.zeros((args.batch, card.input.channels, *args.size), np.float32)]
        if "context" in INPUTS[card.architecture]:
            inputs.append(np.zeros((args.batch, card.input.context_size), np.float32))
        backend = TensorRTBackend(model, card, args.out)
        backend.run(inputs)  # compiles the engine for this shape and caches it (rebuilt on GPU/TensorRT change)
        print(json.dumps({"model": card.name, "backend": "tensorrt", "cache": str(backend.cache_dir)}))
        return 0
    path = OnnxBackend.export(model, card, INPUTS[card.architecture], args.out)
    print(json.dumps({"model": card.name, "sha256": card.sha256, "onnx": str(path)}))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run the service (HTTP API, STOW-RS and the enabled input paths; docs/service.md) until SIGTERM/SIGINT."""
    from server import AegleService

    if args.host:
        settings.api.host = args.host
    if args.port is not None:
        settings.api.port = args.port
    if args.dicom_transfer is not None:
        settings.dicom_transfer.enabled = args.dicom_transfer
    if args.watch is not None:
        settings.pacs.watch = args.watch
    AegleService(settings).serve()
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Create (prints the token once), list or revoke API tokens."""
    from server import TokenStore

    tokens = TokenStore.from_settings(settings.api)
    try:
        if args.action == "create":
            print(tokens.create(args.name, args.role))
        elif args.action == "revoke":
            if not tokens.revoke(args.name):
                print(f"no active token named {args.name!r}", file=sys.stderr)
                return 1
        else:
            for t in tokens.list():
                print(json.dumps({"name": t.name, "role": t.role, "created": t.created, "revoked": t.revoked}))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        tokens.close()
    return 0


def cmd_edge(settings: Settings, args: argparse.Namespace) -> int:
    """Run an edge node (C-STORE SCP → durable outbox → chunked MQTT) until SIGTERM."""
    from edge import EdgeNode, settings_from

    try:
        node = EdgeNode(settings_from(args, settings.edge), settings.mqtt)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    node.run_forever()
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """End-to-end demo on embedded defaults."""
    from aegle.demo import run_demo

    return run_demo(duration_s=args.duration, patients=args.patients, workdir=args.workdir, keep=args.keep,
                    screenshots=args.screenshots)


def cmd_enhance(settings: Settings, args: argparse.Namespace) -> int:
    """Enhance DICOM, PNG and NPY files on this machine through the server's study path (no server needed)."""
    from aegle.enhance import run

    return run(settings, args)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Probe every configured component as /readyz does; exit 1 when any is down."""
    from aegle.status import status

    report = status(settings)
    if args.json:
        print(json.dumps(report))
    else:
        width = max(map(len, report["checks"]))
        for name, check in report["checks"].items():
            print(f"{name:<{width}}  {'up  ' if check['ok'] else 'DOWN'}  {check['reason']}")
        edges = report["edges"]
        if isinstance(edges, str):
            print(f"edge nodes: {edges}")
        for edge in edges if isinstance(edges, list) else []:
            dicom = edge.get("queue", {}).get("dicom", {})
            age = dicom.get("oldest_age_s")
            print(f"edge {edge['site']}/{edge['edge_id']}: {edge.get('state', '?')}, {dicom.get('depth', '?')} "
                  f"instance(s) queued" + ("" if age is None else f", oldest {age:.0f} s"))
    return 0 if report["ready"] else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="aegle", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default from settings)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the end-to-end demo on embedded defaults")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of simulated monitoring (default 30)")
    p.add_argument("--patients", type=int, default=6)
    p.add_argument("--workdir", default="var/demo", help="where the demo keeps its files, report and log")
    p.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    p.add_argument("--screenshots", metavar="DIR", help="save a PNG of each dashboard view into DIR (Chromium)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ingest", help="run an ingest worker (MQTT → store → live context)")
    p.add_argument("--worker-id", default=None, help="fixed id; the MQTT client id and session derive from it")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--retire", action="store_true",
                   help="drain this worker's queued share, leave the shared subscription and end its session")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("edge", help="run an edge node: DICOM C-STORE SCP → durable outbox → chunked MQTT")
    add_edge_arguments(p)
    p.set_defaults(func=cmd_edge)

    p = sub.add_parser("simulate", help="publish simulated bedside and wearable devices")
    p.add_argument("--patients", type=int, default=4)
    p.add_argument("--rate", type=float, default=1.0, help="messages per device per second")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--site", default="ward-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--credentials", default=None, help="JSON file mapping device id to MQTT password")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a model family on the packaged real images (see docs/training.md)",
                       description="Train a model family; `aegle train FAMILY --help` lists the family's options.")
    families = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family in TRAINERS:
        f = families.add_parser(family, help=TRAIN_FAMILIES.get(family), add_help=False, prefix_chars="\0")
        f.add_argument("options", nargs=argparse.REMAINDER, help=f"options of `aegle train {family} --help`")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="the served models (settings next to the registry), or one model's card")
    actions = p.add_subparsers(dest="action", metavar="{list,show}")
    actions.add_parser("list", help="the default: one JSON line per served model (settings, paths, registry, sha256)")
    show = actions.add_parser("show", help="a registry model's card: version, sha256, metrics, training")
    show.add_argument("name", help="registry name, e.g. enhancer-x2")
    p.set_defaults(func=cmd_models, action="list")

    p = sub.add_parser("enhance", help="enhance DICOM (files, folders, DICOMDIR), PNG and NPY files here, no server",
                       description="Enhance DICOM (files, folders, DICOMDIR), PNG and NPY files on this machine, "
                       "without a server, by the server's rules: derived DICOM series, enhanced PNG/NPY files and "
                       "before/after PNGs go to DIR.",
                       epilog="Context: by default each DICOM series' stored vitals at its acquisition time, from the "
                       "configured store (never created when missing); --vitals gives them; --no-context uses none. "
                       "Exit status 1 when any file failed. More: docs/cli.md")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="DICOM files, folders (walked recursively), DICOMDIR files, PNG and NPY files")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the derived DICOM series, enhanced images and before/after PNGs go")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--vitals", type=parse_vitals, default=None, metavar="NAME=VALUE,...",
                        help="the vitals to condition on instead of the store's: hr (/min), spo2 (%%), "
                        "temp (Cel), rr (/min), sbp, dbp (mm[Hg]), motion (m/s2)")
    source.add_argument("--no-context", action="store_true", help="enhance without vitals")
    source.add_argument("--patient", default=None,
                        help="PNG and NPY: the patient whose stored vitals condition them (DICOM: the header's)")
    p.add_argument("--at", type=_moment, default=None, metavar="TIME",
                   help="PNG and NPY with --patient or --vitals: the time of the context (default now)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_enhance, log_level_default="WARNING")

    p = sub.add_parser("status", help="health of the broker, store, PACS and each model, probed as /readyz does")
    p.add_argument("--json", action="store_true", help="print /readyz's JSON form")
    p.set_defaults(func=cmd_status, log_level_default="WARNING")

    p = sub.add_parser("export", help="export a model to ONNX with a parity check (or --tensorrt on CUDA machines)")
    p.add_argument("name", help="registry name, e.g. enhancer-x2")
    p.add_argument("--out", type=Path, default=Path("var/export"), help="directory for the exported file")
    p.add_argument("--weights", type=Path, default=None, help="registry root (default: settings / shipped weights)")
    p.add_argument("--tensorrt", action="store_true", help="compile with torch-tensorrt (needs a CUDA GPU)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                   help="input size the TensorRT engine is built for (ONNX export is size-independent)")
    p.add_argument("--batch", type=int, default=8, help="batch the TensorRT engine is built for")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="run the service: HTTP API, STOW-RS, MQTT DICOM, Orthanc watch (docs/service.md)")
    p.add_argument("--host", default=None, help="listen address (default from settings: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default from settings: 8400)")
    p.add_argument("--dicom-transfer", action=argparse.BooleanOptionalAction, default=None,
                   help="assemble DICOM forwarded by edge nodes over MQTT (default: AEGLE_DICOM_TRANSFER__ENABLED)")
    p.add_argument("--watch", action=argparse.BooleanOptionalAction, default=None,
                   help="enhance every new stable series in Orthanc (default: AEGLE_PACS__WATCH)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="manage API tokens (stored hashed; a new token is printed once)")
    token_sub = p.add_subparsers(dest="action", required=True)
    t = token_sub.add_parser("create", help="create a token and print it")
    t.add_argument("--role", required=True, choices=["device", "clinician", "operator", "admin"])
    t.add_argument("--name", required=True, help="unique name; the audit log records it")
    t = token_sub.add_parser("revoke", help="revoke a token by name")
    t.add_argument("name")
    token_sub.add_parser("list", help="names, roles and dates (never the tokens) as JSON lines")
    p.set_defaults(func=cmd_token)

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
    # --log-level, else a level the settings set explicitly, else the command's own (enhance and status keep their
    # output readable: warnings only), else the settings' default.
    chosen = settings.log_level if "log_level" in settings.model_fields_set else None
    configure_logging(args.log_level or chosen or getattr(args, "log_level_default", settings.log_level))
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    return func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
