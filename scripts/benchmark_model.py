#!/usr/bin/env python3
"""CPU/GPU timing of Human3R.step with random weights at the released architectures.

Prints the machine's bfloat16 capability, then for each variant, dtype, compile,
convolution-layout and thread setting: per-stage times, s/frame (median, min, max over the
timed frames after a warm-up), FLOP per frame (torch's FlopCounterMode on one eager float32
frame, in a process of its own), the achieved FLOP/s against the machine's own 4096^3 matmul rate
measured just before the frames, and the peak RSS of the process. Weights are random
(initialised in place, no checkpoint needed); detections are forced to a fixed number of
well-separated heads so the per-human work is representative. Each configuration runs in its
own process so that each peak RSS is its own.

    python scripts/benchmark_model.py                          # 672S and 896L, every native dtype
    python scripts/benchmark_model.py --variant 896L --dtype float32 --compile both --frames 3
    python scripts/benchmark_model.py --variant 672S --channels-last both --threads 1 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python scripts/benchmark_model.py --variant 672S --dtype float32 int8 --qengine onednn
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_models import force_detections, matmul_rate, peak_rss_gib, random_model  # noqa: E402

from h3r_ros.engine.precision import bf16_capability  # noqa: E402
from h3r_ros.model import Human3RConfig  # noqa: E402

# stage name -> (owner attribute path, method name); timed by wrapping the bound methods
STAGES = {
    "encoder": ("", "_encode"),
    "dinov2": ("", "_backbone_tokens"),
    "detection": ("", "_detect"),
    "mask": ("", "_segment"),
    "human tokens": ("", "_human_tokens"),
    "pose query": ("", "_pose_query"),
    "decoder": ("", "_decode"),
    "dense heads": ("", "_dense_heads"),
    "smpl heads": ("downstream_head", "smpl"),
    "memory update": ("", "_update_memory"),
}


def _cpu_attention_flop(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode has no formula for the CPU attention kernel: without it a third of a
# DINOv2 step would go uncounted.
FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop}


def instrument(model, device: str):
    times = defaultdict(float)

    def wrap(name, fn):
        def timed(*args, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name] += time.perf_counter() - start
            return result

        return timed

    for stage, (owner_path, method) in STAGES.items():
        owner = model.get_submodule(owner_path) if owner_path else model
        setattr(owner, method, wrap(stage, getattr(owner, method)))
    return times


def run(args, results) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = (f"[{args.variant} {args.dtype}{' compiled' if args.compiled else ''}"
           f"{'' if args.channels_last else ' contiguous convs'}, {torch.get_num_threads()} threads]")
    int8 = args.dtype == "int8"
    dtype = torch.float32 if int8 else getattr(torch, args.dtype)
    cfg = Human3RConfig.variant(args.variant)
    start = time.perf_counter()
    model = random_model(cfg, dtype, args.device)
    if int8:  # dynamic quantization: int8 weights, activations quantized per call
        if args.qengine:
            torch.backends.quantized.engine = args.qengine
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    print(f"{tag} built in {time.perf_counter() - start:.1f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f} G params", flush=True)
    force_detections(model, args.humans)
    if args.channels_last:  # as Human3REngine prepares the model
        model.to(memory_format=torch.channels_last)

    gen = torch.Generator().manual_seed(1)
    img = (torch.rand(1, 3, args.height, args.width, generator=gen) * 2 - 1).to(args.device, dtype)
    res = cfg.mhmr_img_res
    img_mhmr = (torch.rand(1, 3, res, res, generator=gen) * 2 - 1).to(args.device, dtype)
    state, mem = model.initial_state()
    extra = frozenset(args.extra)
    if args.count_flop:  # its own eager run: compiled code hides its kernels from the counter
        with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
            model.step(img, img_mhmr, state, mem, first=True, ttt3r=args.ttt3r, extra_outputs=extra)
        results.put(counter.get_total_flops())
        return
    # Measured here, just before the frames: a shared machine's speed drifts between runs.
    rate = matmul_rate(dtype, args.device)
    if args.compiled:
        model.compile_fixed_shape_stages()
    times = instrument(model, args.device)
    totals = []
    for frame in range(args.warmup + args.frames):
        times.clear()
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.step(img, img_mhmr, state, mem, first=frame == 0, ttt3r=args.ttt3r, extra_outputs=extra)
        if args.device == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        if frame >= args.warmup:
            totals.append(total)
        gate = out["ttt3r_gate"][..., None].to(dtype) if args.ttt3r and frame > 0 else 1.0
        state = gate * out["state_new"] + (1 - gate) * state
        mem = out["mem_new"]
        stages = "  ".join(f"{k} {v:.2f}" for k, v in times.items())
        kind = "warm-up" if frame < args.warmup else "frame"
        print(f"{tag} {kind} {frame}: {total:.2f} s (n={out['smpl_loc'].shape[1]})  {stages}  "
              f"other {total - sum(times.values()):.2f}", flush=True)
    results.put(dict(variant=args.variant, dtype=args.dtype, compiled=args.compiled,
                     channels_last=args.channels_last, threads=torch.get_num_threads(), matmul=rate,
                     median=statistics.median(totals), min=min(totals), max=max(totals), rss=peak_rss_gib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=["672S", "896L"], help="672S, 672B, 672L, 896L")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "bfloat16", "int8"),
                        help="default: float32, plus bfloat16 where the hardware computes it natively; "
                             "int8: float32 with dynamically quantized Linear layers (compared with the "
                             "float32 matmul rate)")
    parser.add_argument("--qengine", choices=torch.backends.quantized.supported_engines,
                        help="quantized engine for int8 (default: torch's; onednn honours ONEDNN_MAX_CPU_ISA)")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="torch.compile the fixed-shape stages (compiled during the warm-up)")
    parser.add_argument("--channels-last", choices=("off", "on", "both"), default="on",
                        help="convolution weights in channels_last, as the engine runs them")
    parser.add_argument("--frames", type=int, default=3, help="timed frames after the warm-up")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--humans", type=int, default=2, help="forced number of detections")
    parser.add_argument("--ttt3r", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[], help="extra outputs: pts3d_in_other_view conf rgb")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="torch intra-op threads, one run each (0: torch default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.frames < 1:
        parser.error("--frames must be >= 1")
    native, capability = bf16_capability(args.device)
    dtypes = args.dtype or (["float32", "bfloat16"] if native else ["float32"])
    choices = {"off": [False], "on": [True], "both": [False, True]}
    settings = list(itertools.product(args.variant, dtypes, choices[args.compile], choices[args.channels_last],
                                      args.threads))
    print(f"machine: {capability}; {torch.get_num_threads()} threads by default", flush=True)

    context = multiprocessing.get_context("spawn")
    results = context.Queue()

    def child(**setting):
        child_args = argparse.Namespace(**{**vars(args), "compiled": False, "channels_last": True, "threads": 0,
                                           "count_flop": False, **setting})
        process = context.Process(target=run, args=(child_args, results))
        process.start()
        process.join()
        if process.exitcode:
            sys.exit(process.exitcode)
        return results.get()

    flops = {variant: child(variant=variant, dtype="float32", count_flop=True) for variant in args.variant}
    rows = [child(variant=variant, dtype=dtype, compiled=compiled, channels_last=channels_last, threads=threads)
            for variant, dtype, compiled, channels_last, threads in settings]

    print(f"\n{capability}")
    print(f"{'variant':<8} {'dtype':<9} {'compile':<8} {'convs':<13} {'threads':>7} {'s/frame med':>11} {'min':>7} "
          f"{'max':>7} {'TFLOP/frame':>11} {'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'of matmul':>9} {'peak RSS GiB':>12}")
    for row in rows:
        flop = flops[row["variant"]]
        rate = flop / row["median"]
        convs = "channels_last" if row["channels_last"] else "contiguous"
        print(f"{row['variant']:<8} {row['dtype']:<9} {'on' if row['compiled'] else 'off':<8} {convs:<13} "
              f"{row['threads']:>7} {row['median']:>11.2f} {row['min']:>7.2f} {row['max']:>7.2f} {flop / 1e12:>11.3f} "
              f"{rate / 1e9:>8.0f} {row['matmul'] / 1e9:>14.0f} {rate / row['matmul']:>9.0%} {row['rss']:>12.2f}")
    print(f"({args.width}x{args.height}, {args.humans} forced detections, {args.warmup} warm-up + {args.frames} "
          f"timed frames; 'matmul': a 4096^3 matmul in the row's dtype (int8: float32) with its threads, measured\n"
          f"just before its frames; 'of matmul' = achieved FLOP/s / that rate)")


if __name__ == "__main__":
    main()
