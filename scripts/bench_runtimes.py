"""`bench.py runtimes`: every bundle x runtime x precision in one run, and whether `model.runtime: auto` picks
the fastest.

For each bundle folder (classic, cae-128, patchcore by default: the default bundles), a copy is verified
here (tools/verify.py on the benchmark video's frames: parity with ONNX Runtime and the model time, batch 1,
one thread, median/p99 of interleaved runs). Each (runtime, precision) that passed, then `auto`, runs the
real pipeline (bench.py's `measure`: the daemon in a child process, a real mosquitto, e2e = reject arrival
minus capture) at each rate, back to back per rate so the shared box's load hits neighbours alike: e2e
p50/p99 at 30 fps, frames/s flat out against the reference loop (the PyTorch CAE at 128 px, image by
image), CPU, peak RSS. Nothing asserts on speed: figures are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from edged.runtimes import registry

DEFAULT_BUNDLES = ("classic", "cae-128", "patchcore")


def _verified_copy(src: Path, dst: Path, frames: list[Any]) -> Any:
    from tools.verify import verify_bundle

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return verify_bundle(dst, frames[:16], what="benchmark video frames")


def _model_rows(manifest: Any) -> list[dict[str, Any]]:
    return [{"runtime": c.runtime, "precision": c.precision, "passed": c.passed, "max_diff": c.max_diff,
             "model_ms_p50": c.latency_ms[0] if c.latency_ms else None,
             "model_ms_p99": c.latency_ms[1] if c.latency_ms else None, "error": c.error}
            for c in manifest.verified]


def _pairs(manifest: Any) -> list[tuple[str, str]]:
    """What to run through the pipeline: every passed pair, a precision once per file (classic's int8 is fp32)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for c in manifest.verified:
        key = (c.runtime, manifest.models[c.precision].file)
        if c.passed and key not in seen:
            seen.add(key)
            out.append((c.runtime, c.precision))
    return out


def _auto_verdict(rows: list[dict[str, Any]], runs: list[dict[str, Any]], manifest: Any) -> dict[str, Any]:
    """auto's choice against the fastest by model time (what auto compares) and by flat-out frames/s."""
    auto = [r for r in runs if r["case_runtime"] == "auto"]
    chosen = (auto[0]["runtime"], auto[0]["precision"]) if auto else None
    allowed = {manifest.default, "fp32"}
    timed = [r for r in rows if r["passed"] and r["model_ms_p50"] is not None and r["precision"] in allowed
             and r["runtime"] not in registry.SERIALIZED]
    fastest_model = min(timed, key=lambda r: r["model_ms_p50"]) if timed else None
    flat = [r for r in runs if r["rate_fps"] == "max" and r["case_runtime"] != "auto"]
    fastest_flat = max(flat, key=lambda r: r["throughput_fps"]) if flat else None
    return {
        "auto_chose": chosen, "auto_reason": auto[0].get("runtime_choice") if auto else None,
        "fastest_model_ms": (fastest_model["runtime"], fastest_model["precision"]) if fastest_model else None,
        "fastest_flat_out": (fastest_flat["runtime"], fastest_flat["precision"]) if fastest_flat else None,
    }


def run(args: argparse.Namespace, bench: ModuleType) -> int:
    """The sub-benchmark; `bench` is scripts/bench.py (its measure, baseline, broker and listener)."""
    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-rt-"))
    work.mkdir(parents=True, exist_ok=True)
    bundles = Path(args.bundles)
    folders = [f for f in (args.only or DEFAULT_BUNDLES) if (bundles / f / "manifest.json").exists()]
    if not folders:
        raise SystemExit(f"bench runtimes: no bundle under {bundles} (expected {', '.join(DEFAULT_BUNDLES)})")
    video, frames = bench.prepare_inputs(args, work)
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "machine": bench.machine(),
        "versions": {n: registry.version(n) for n in registry.NAMES}, "load_avg_start": bench.loadavg(),
        "duration_s": args.duration, "warmup_s": args.warmup, "rates": args.rates, "bundles": {}}
    report["baseline"] = bench.baseline(video, [128], args.baseline_images) if args.baseline_images > 0 else []
    broker = bench.Broker(work)
    listener = bench.RejectListener(broker.port)
    try:
        for folder in folders:
            report["bundles"][folder] = _one_bundle(args, bench, folder, bundles / folder, work, video, frames,
                                                    listener, broker.port)
    finally:
        listener.close()
        broker.stop()
    all_runs = [r for b in report["bundles"].values() for r in b["runs"]]
    bench.ratios(all_runs, report["baseline"])
    report["load_avg_end"] = bench.loadavg()
    for folder, b in report["bundles"].items():
        print(f"{folder}: auto chose {b['auto']['auto_chose']}; fastest by model time {b['auto']['fastest_model_ms']}, "
              f"by flat-out frames/s {b['auto']['fastest_flat_out']}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _one_bundle(args: argparse.Namespace, bench: ModuleType, folder: str, src: Path, work: Path, video: Path,
                frames: list[Any], listener: Any, port: int) -> dict[str, Any]:
    verified_dir = work / "verified"
    manifest = _verified_copy(src, verified_dir / folder, frames)
    rows = _model_rows(manifest)
    for r in rows:
        print(f"{folder:>10} model {r['runtime']:>11}/{r['precision']}: parity "
              f"{'ok' if r['passed'] else 'FAILED'} (max diff {r['max_diff']}), p50 {r['model_ms_p50']} ms, "
              f"p99 {r['model_ms_p99']} ms {r['error'][:80]}", flush=True)
    runs = []
    (work / "runs").mkdir(parents=True, exist_ok=True)
    for rate in args.rates:
        for runtime, precision in [*_pairs(manifest), ("auto", None)]:
            name = f"{folder}-{precision or 'default'}-{runtime}"
            case = bench.Case(name, folder, precision, (rate,))
            extra = {**bench.model_extra(args), "runtime": runtime}
            r = bench.measure(case, rate, bundles=verified_dir, video=video, frames=frames, work=work / "runs",
                              listener=listener, port=port, duration=args.duration, warmup=args.warmup,
                              model_extra=extra, reject_fraction=args.reject_fraction)
            r["case_runtime"] = runtime
            runs.append(r)
            print(f"{folder:>10} {runtime:>11}/{r['precision']} -> {r.get('runtime')} @ {r['rate_fps']!s:>3}: "
                  f"{r['throughput_fps']:7.1f} frames/s, e2e p50 {r['e2e_ms']['p50']} p99 {r['e2e_ms']['p99']} ms "
                  f"({r['rejects_received']} rejects), infer p50 {r['stages_ms']['infer']['p50']} ms, CPU "
                  f"{r['cpu_percent']}%, RSS {r['peak_rss_mb']} MB, load {r['load_avg']['after'][0]}", flush=True)
    return {"manifest_runtimes": list(manifest.runtimes), "model": rows, "runs": runs,
            "auto": _auto_verdict(rows, runs, manifest)}

