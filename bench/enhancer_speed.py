"""Enhancer inference speed on this CPU (torch eager and ONNX Runtime) against the machine's fp32 GEMM rate.

Method, all in one process and one run so that the ratios share the machine's state:

* **Baseline** — numpy ``float32`` ``n×n @ n×n`` (``n`` = 2048, 1024 with ``--quick``): ``2·n³`` FLOP per
  product, reported as GFLOP/s. The BLAS library and its thread count come from ``threadpoolctl``
  (``numpy.show_config`` summary without it).
* **FLOPs** — counted exactly by walking the model with forward hooks on one batch: Conv2d
  ``2·Cin/groups·k_h·k_w·Cout·H_out·W_out``, ConvTranspose2d ``2·Cin·Cout/groups·k_h·k_w·H_in·W_in`` (every
  input pixel scatters a ``k×k×Cout`` patch), Linear ``2·in·out`` per row. Biases and elementwise operations
  (LeakyReLU, sigmoid, gating products, residual adds, α scaling, PixelShuffle, the bicubic base) are NOT
  counted — they are memory-bound and would add < 1 % to the count, but not to the time: the per-module
  torch timings (``time_share_torch``) show how much wall time falls outside the counted layers.
* **Throughput** — batch 8, LR 128×128 → HR 256×256 (×2), random context, model weights random-init (speed
  does not depend on values). torch eager under ``torch.inference_mode`` with ``torch.set_num_threads(2)``;
  ONNX Runtime CPUExecutionProvider on the graph from :func:`gan.export.export_onnx` (dynamic axes),
  ``intra_op_num_threads=2``, ``ORT_ENABLE_ALL``. Warm-up, then ``--runs`` rounds; each round times one
  torch batch, one ORT batch and one GEMM back to back (interleaved, so a concurrent load hits all three
  alike; a 50 ms pause before each phase lets the previous phase's spinning threads go idle), and figures
  are medians over rounds. ``cpu_util`` (process CPU time ÷ wall time, 2.0 = both cores), ``machine_load``
  (from ``/proc/stat``: cores used by other processes and stolen by the hypervisor, averaged over the run)
  and the load average show how busy the machine was; ``"contended": true`` flags a run where other
  processes used more than 0.2 core on average. Under contention the 2-thread figures collapse unevenly
  (barrier-synchronised OpenMP/OpenBLAS threads wait for the descheduled one; ORT's pool degrades more
  gracefully), so even the ratios are then unreliable: rerun on an idle machine.
* **gemm_fraction** — achieved model GFLOP/s of the faster backend (slices/s × GFLOP/slice) ÷ GEMM GFLOP/s.
* **Parity** — max |ORT − torch| on the timed batch, once.
* **Two served models** — ``--name`` (the model the PACS path serves) and ``--fast-name`` (the fast model), both
  from the weights registry, measured in the same run with the same protocol (``fast_slices_per_s``, ``fast``);
  one model given twice is measured once.
* **Variants** (full run only, or ``--variants``) — cheaper configurations of the same class, same protocol
  with fewer rounds, to show the speed/size trade-off (including the pixel-unshuffle trunk). The headline
  fields are the configuration chosen by the flags: the default configuration (pixelshuffle, channels 32,
  4 blocks, α conditioning) with ``--trunk`` (``lowres``, the default, or ``unshuffle``), or with ``--name``
  a trained model from the weights registry (its card's config and its weights, sha256 checked).

    python -m bench.enhancer_speed            # 2048² GEMM, 9 rounds, plus variants (a few minutes)
    python -m bench.enhancer_speed --quick    # 1024² GEMM, 5 rounds, default model only (under a minute)
    python -m bench.enhancer_speed --quick --trunk unshuffle   # headline = the pixel-unshuffle trunk
    python -m bench.enhancer_speed --quick --name enhancer-x2  # headline = the shipped model (gan/weights)
    python -m bench.enhancer_speed --name enhancer-x2-quality --fast-name enhancer-x2 --no-variants  # both models

The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core import CONTEXT_SIZE
from gan import TRUNKS, ContextEnhancer, MultiScaleBlock, export_onnx

THREADS = 2
#: Modules whose FLOPs are counted (a MultiScaleBlock for its branch convs, which it runs functionally).
COUNTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, MultiScaleBlock)
#: Average cores used by other processes (or stolen) above which the result is flagged ``"contended"``.
CONTENDED_CORES = 0.2
DEFAULT_CONFIG: dict[str, Any] = {
    "channels": 32, "n_blocks": 4, "upsampler": "pixelshuffle", "conditioning": "alpha", "trunk": "lowres"
}
VARIANTS: tuple[dict[str, Any], ...] = (
    {**DEFAULT_CONFIG, "trunk": "unshuffle"},  # pixel-unshuffle trunk (blocks at LR/2, one PixelShuffle(4) tail)
    {**DEFAULT_CONFIG, "channels": 24},
    {**DEFAULT_CONFIG, "n_blocks": 2},
    {**DEFAULT_CONFIG, "channels": 16},
)


def headline_config(trunk: str = "lowres") -> dict[str, Any]:
    """The configuration behind the headline fields: :data:`DEFAULT_CONFIG` with the given ``trunk``."""
    return {**DEFAULT_CONFIG, "trunk": trunk}


def variants_for(config: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """:data:`VARIANTS` minus ``config`` itself, plus :data:`DEFAULT_CONFIG` when the headline is not the default."""
    others = tuple(v for v in VARIANTS if v != config)
    return others if config == DEFAULT_CONFIG else (DEFAULT_CONFIG, *others)


def shipped(root: str | Path | None, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """``(config, state dict, label)`` of a registry enhancer (sha256 checked by :func:`gan.registry.load_model`)."""
    from gan import load_model

    model, card = load_model(root, name)
    if card.architecture != "enhancer" or card.config.get("scale") != 2 or card.config.get("in_channels", 1) != 1:
        raise ValueError(f"{name}: the speed benchmark measures grey-level x2 enhancers, got {card.config}")
    config = {k: v for k, v in card.config.items() if k not in ("in_channels", "scale")}
    return config, model.state_dict(), f"{name} (sha256 {card.sha256})"


# --------------------------------------------------------------------------- baseline


def blas_info() -> str:
    """Which BLAS numpy uses and with how many threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        config = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')} (numpy.show_config; thread count unknown)"
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return "; ".join(
        f"{p.get('internal_api')} {p.get('version')} {p.get('architecture', '')}, {p.get('num_threads')} threads"
        for p in pools
    ) or "unknown"


def gemm_runner(n: int, repeats: int) -> Callable[[], float]:
    """A function timing ``repeats`` float32 ``n×n @ n×n`` products and returning GFLOP/s (median of repeats)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up (thread pool start, page faults)

    def run() -> float:
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            rates.append(2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
        return statistics.median(rates)

    return run


# --------------------------------------------------------------------------- FLOP count


@dataclass
class LayerFlops:
    """FLOPs of one counted module for the whole batch."""

    name: str
    kind: str
    flops: int


def _group(name: str) -> str:
    """Coarse component of a module name (``blocks.2.adaptive.multiscale.branches.1.0`` → ``multiscale``)."""
    parts = name.split(".")
    if parts[0] == "blocks":
        if parts[2] == "attention":
            return "attention_convs"
        return "multiscale_convs" if parts[3] == "multiscale" else "project_1x1"
    return {"upsample": "upsample_conv", "context_mlp": "context_mlp"}.get(parts[0], parts[0])


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> list[LayerFlops]:
    """Conv2d / ConvTranspose2d / Linear FLOPs (multiply + add = 2) for one forward on ``inputs``."""
    layers: list[LayerFlops] = []

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        def count(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            x = args[0]
            if isinstance(module, MultiScaleBlock):  # its branch convs run functionally (λ folded into weights)
                for k, (conv, _) in enumerate(module.branches):
                    kh, kw = conv.kernel_size
                    per_out = 2 * (conv.in_channels // conv.groups) * kh * kw * conv.out_channels
                    layers.append(LayerFlops(f"{name}.branches.{k}.0", "Conv2d", int(per_out * out[:, 0].numel())))
                return
            if isinstance(module, nn.ConvTranspose2d):
                kh, kw = module.kernel_size
                per_in = 2 * module.in_channels * (module.out_channels // module.groups) * kh * kw
                flops = per_in * x.shape[0] * x.shape[2] * x.shape[3]
            elif isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_out = 2 * (module.in_channels // module.groups) * kh * kw * module.out_channels
                flops = per_out * out.shape[0] * out.shape[2] * out.shape[3]
            else:
                assert isinstance(module, nn.Linear)
                flops = 2 * module.in_features * module.out_features * (x.numel() // x.shape[-1])
            layers.append(LayerFlops(name, type(module).__name__, int(flops)))

        return count

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, COUNTED)
    ]
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return layers


def time_share_torch(model: nn.Module, *inputs: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Fraction of eager forward wall time (summed over ``repeats`` forwards) spent in each counted-layer group;
    ``other`` = the rest (elementwise ops, sigmoid, PixelShuffle, bicubic base, Python overhead)."""
    spent: dict[str, float] = {}
    starts: dict[str, float] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, COUNTED):
            def pre(_m: nn.Module, _a: tuple[Any, ...], name: str = name) -> None:
                starts[name] = time.perf_counter()

            def post(_m: nn.Module, _a: tuple[Any, ...], _o: torch.Tensor, name: str = name) -> None:
                group = _group(name)
                spent[group] = spent.get(group, 0.0) + time.perf_counter() - starts[name]

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(*inputs)
            total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    share = {k: round(v / total, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    share["other"] = round(max(0.0, 1.0 - sum(spent.values()) / total), 3)
    return share


# --------------------------------------------------------------------------- machine load


@dataclass(frozen=True)
class CpuSnapshot:
    """Machine-wide busy and steal CPU seconds (``/proc/stat``), this process's CPU seconds, wall time."""

    busy: float
    steal: float
    own: float
    wall: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        tick = float(os.sysconf("SC_CLK_TCK"))
        # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick
        steal = fields[7] / tick
        return cls(busy, steal, time.process_time(), time.perf_counter())

    def since(self, start: CpuSnapshot) -> dict[str, float]:
        """Cores used by OTHER processes, stolen by the hypervisor and used by this process, on average."""
        wall = max(self.wall - start.wall, 1e-9)
        own = self.own - start.own
        return {
            "other_processes_cores": round(max(0.0, (self.busy - start.busy) - own - (self.steal - start.steal))
                                           / wall, 2),
            "steal_cores": round((self.steal - start.steal) / wall, 2),
            "this_process_cores": round(own / wall, 2),
        }


# --------------------------------------------------------------------------- backends


def ort_session(path: Path, threads: int = THREADS) -> Any:
    """ONNX Runtime CPU session: ``threads`` intra-op threads, all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@dataclass
class Timed:
    """Wall seconds and process CPU seconds of each timed round."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, fn: Callable[[], Any], settle_s: float = 0.05) -> Any:
        time.sleep(settle_s)  # let the previous phase's spinning worker threads go idle
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)
        return out

    def per_s(self, items: int) -> float:
        return items / statistics.median(self.wall)

    def cpu_util(self) -> float:
        return sum(self.cpu) / sum(self.wall)


def measure_config(
    config: dict[str, Any],
    batch: int,
    lr_size: int,
    runs: int,
    warmup: int,
    workdir: Path,
    gemm: Callable[[], float] | None = None,
    seed: int = 0,
    state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """FLOPs, torch and ORT throughput (and GEMM rate, if ``gemm`` is given) of one enhancer configuration.

    ``state``: trained weights to load (else random-init; the timing does not depend on the values).
    """
    torch.manual_seed(seed)
    model = ContextEnhancer(in_channels=1, scale=2, **config).eval()
    if state is not None:
        model.load_state_dict(state)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, lr_size, lr_size, generator=gen)
    ctx = torch.rand(batch, CONTEXT_SIZE, generator=gen)

    layers = count_flops(model, x, ctx)
    total = sum(layer.flops for layer in layers)
    by_group: dict[str, int] = {}
    for layer in layers:
        by_group[_group(layer.name)] = by_group.get(_group(layer.name), 0) + layer.flops

    name = "enhancer_" + "_".join(f"{k}{v}" for k, v in config.items())
    with warnings.catch_warnings():  # the trace-time shape check on the context is a constant here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        onnx_path = export_onnx(model, (x, ctx), workdir / f"{name}.onnx", ["image", "context"], ["enhanced"])
    session = ort_session(onnx_path)
    feeds = {"image": x.numpy(), "context": ctx.numpy()}

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return model(x, ctx).numpy()

    def run_ort() -> np.ndarray:
        return session.run(None, feeds)[0]

    for _ in range(warmup):
        run_torch()
        run_ort()
    t_torch, t_ort, t_gemm = Timed(), Timed(), Timed()
    gemm_rates: list[float] = []
    out_torch = out_ort = None
    for i in range(runs):
        out_torch = t_torch.add(run_torch)
        out_ort = t_ort.add(run_ort)
        if gemm is not None:
            gemm_rates.append(t_gemm.add(gemm))
        print(
            f"  {name} round {i + 1}/{runs}: torch {batch / t_torch.wall[-1]:.2f} slices/s, "
            f"ort {batch / t_ort.wall[-1]:.2f} slices/s"
            + (f", gemm {gemm_rates[-1]:.0f} GFLOP/s" if gemm_rates else ""),
            file=sys.stderr,
        )
    assert out_torch is not None and out_ort is not None
    assert out_ort.shape == (batch, 1, 2 * lr_size, 2 * lr_size)
    parity = float(np.max(np.abs(out_ort.astype(np.float64) - out_torch.astype(np.float64))))

    gflop_slice = total / batch / 1e9
    sps_torch, sps_ort = t_torch.per_s(batch), t_ort.per_s(batch)
    result: dict[str, Any] = {
        "config": config,
        "params": sum(p.numel() for p in model.parameters()),
        "model_gflop_per_slice": round(gflop_slice, 4),
        "gflop_per_slice_by_part": {
            k: round(v / batch / 1e9, 4) for k, v in sorted(by_group.items(), key=lambda kv: -kv[1])
        },
        "flop_share_by_part": {k: round(v / total, 4) for k, v in sorted(by_group.items(), key=lambda kv: -kv[1])},
        "slices_per_s_torch": round(sps_torch, 3),
        "slices_per_s_onnxruntime": round(sps_ort, 3),
        "best_backend": "onnxruntime" if sps_ort >= sps_torch else "torch",
        "slices_per_s": round(max(sps_torch, sps_ort), 3),
        "model_gflops_torch": round(sps_torch * gflop_slice, 2),
        "model_gflops_onnxruntime": round(sps_ort * gflop_slice, 2),
        "parity_max_abs": parity,
        "cpu_util": {"torch": round(t_torch.cpu_util(), 2), "onnxruntime": round(t_ort.cpu_util(), 2)},
        "runs_slices_per_s": {
            "torch": [round(batch / w, 3) for w in t_torch.wall],
            "onnxruntime": [round(batch / w, 3) for w in t_ort.wall],
        },
        "time_share_torch": time_share_torch(model, x, ctx),
    }
    if gemm_rates:
        result["gemm_gflops"] = round(statistics.median(gemm_rates), 2)
        result["runs_gemm_gflops"] = [round(r, 1) for r in gemm_rates]
        result["cpu_util"]["gemm"] = round(t_gemm.cpu_util(), 2)
        result["gemm_fraction"] = round(max(sps_torch, sps_ort) * gflop_slice / result["gemm_gflops"], 4)
    return result


def run_benchmark(
    batch: int = 8,
    lr_size: int = 128,
    runs: int = 7,
    warmup: int = 2,
    gemm_n: int = 2048,
    gemm_repeats: int = 3,
    variants: tuple[dict[str, Any], ...] = (),
    variant_runs: int | None = None,
    config: dict[str, Any] | None = None,
    weights: tuple[str | Path | None, str] | None = None,
    fast: tuple[str | Path | None, str] | None = None,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-ready result (headline fields = ``config``, default
    :data:`DEFAULT_CONFIG`; or, with ``weights=(registry root, name)``, that trained model's config and weights).

    ``fast=(registry root, name)``: the fast model, measured right after the headline in the same way (``fast_*``).
    """
    state, weights_label = None, "random-init"
    if weights is not None:
        config, state, weights_label = shipped(*weights)
    config = dict(config or DEFAULT_CONFIG)
    fast_model = None if fast is None else shipped(*fast)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    cpu_start = CpuSnapshot.take()
    try:
        gemm = gemm_runner(gemm_n, gemm_repeats)
        with tempfile.TemporaryDirectory(prefix="aegle-bench-enhancer-") as tmp:
            head = measure_config(config, batch, lr_size, runs, warmup, Path(tmp), gemm, state=state)
            fast_result = None
            if fast_model is not None:
                fast_config, fast_state, fast_label = fast_model
                measured = dict(head) if fast_label == weights_label else measure_config(
                    fast_config, batch, lr_size, runs, warmup, Path(tmp), gemm, state=fast_state
                )  # the same model twice is measured once
                fast_result = {"weights": fast_label, **measured}
            others = [
                measure_config(cfg, batch, lr_size, variant_runs or max(2, runs // 2), 1, Path(tmp))
                for cfg in variants
            ]
    finally:
        torch.set_num_threads(old_threads)
    cpu_end = CpuSnapshot.take()
    load = cpu_end.since(cpu_start)
    contended = load["other_processes_cores"] + load["steal_cores"] > CONTENDED_CORES
    if contended:
        print(
            f"WARNING: other processes used {load['other_processes_cores']} cores on average during the run: the "
            "2-thread figures (torch's OpenMP and OpenBLAS most of all) are depressed and gemm_fraction is not "
            "meaningful; rerun on an idle machine",
            file=sys.stderr,
        )
    for other in others:
        best = other["slices_per_s"] * other["model_gflop_per_slice"]
        other["gemm_fraction"] = round(best / head["gemm_gflops"], 4)
        for key in ("runs_slices_per_s", "time_share_torch", "gflop_per_slice_by_part"):
            other.pop(key)
    fast_fields = {} if fast_result is None else {
        "fast_slices_per_s": fast_result["slices_per_s"],
        "fast_slices_per_s_onnxruntime": fast_result["slices_per_s_onnxruntime"],
        "fast": fast_result,
    }  # fmt: skip
    return {
        "bench": "enhancer_speed",
        "model": "ContextEnhancer",
        "weights": weights_label,
        **fast_fields,
        "config": head.pop("config"),
        "scale": 2,
        "batch": batch,
        "lr_size": lr_size,
        "hr_size": 2 * lr_size,
        "runs": runs,
        "warmup": warmup,
        "threads": THREADS,
        "slices_per_s": head.pop("slices_per_s"),
        "slices_per_s_onnxruntime": head.pop("slices_per_s_onnxruntime"),
        "slices_per_s_torch": head.pop("slices_per_s_torch"),
        "best_backend": head.pop("best_backend"),
        "gemm_gflops": head.pop("gemm_gflops"),
        "gemm_n": gemm_n,
        "blas": blas_info(),
        "model_gflop_per_slice": head.pop("model_gflop_per_slice"),
        "gemm_fraction": head.pop("gemm_fraction"),
        "parity_max_abs": head.pop("parity_max_abs"),
        "flops_counted": "Conv2d, ConvTranspose2d, Linear (2 per MAC); elementwise ops, biases, PixelShuffle and "
        "the bicubic base not counted",
        **head,
        "variants": others,
        "torch": torch.__version__,
        "onnxruntime": _ort_version(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        # Average over the whole run: > 0.2 "other_processes_cores" means the figures are contended.
        "machine_load": load,
        "contended": contended,
        "elapsed_s": round(cpu_end.wall - cpu_start.wall, 1),
    }


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024² GEMM, 5 rounds, no variants (under a minute)")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds (default 9, 5 with --quick)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr-size", type=int, default=128)
    parser.add_argument("--trunk", choices=TRUNKS, default="lowres",
                        help="trunk of the headline configuration (default lowres, the shipped default)")
    parser.add_argument("--weights", default=None, help="registry root of --name (default gan/weights)")
    parser.add_argument("--name", default=None, help="measure this trained enhancer (e.g. enhancer-x2), not --trunk")
    parser.add_argument("--fast-weights", default=None, help="registry root of --fast-name (default gan/weights)")
    parser.add_argument("--fast-name", default=None, help="also measure this trained enhancer, the fast model")
    parser.add_argument("--variants", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure cheaper configurations (default: on, off with --quick)")
    args = parser.parse_args()
    with_variants = args.variants if args.variants is not None else not args.quick
    config = shipped(args.weights, args.name)[0] if args.name else headline_config(args.trunk)
    result = run_benchmark(
        batch=args.batch,
        lr_size=args.lr_size,
        runs=args.runs or (5 if args.quick else 9),
        warmup=1 if args.quick else 2,
        gemm_n=1024 if args.quick else 2048,
        gemm_repeats=3 if args.quick else 5,
        variants=variants_for(config) if with_variants else (),
        config=config,
        weights=(args.weights, args.name) if args.name else None,
        fast=(args.fast_weights, args.fast_name) if args.fast_name else None,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
