#!/usr/bin/env python3
"""CPU/GPU timing of Human3R.step with random weights at a released architecture.

Prints per-stage wall times per frame and the peak resident memory of the process. Weights
are random (initialised in place, no checkpoint needed); detections are forced to a fixed
number of well-separated heads so the per-human work is representative. Each dtype runs in
its own process so that the peak RSS is not polluted by the other run.

    python scripts/benchmark_model.py --dtype both --frames 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from h3r_ros.model import Human3R, Human3RConfig  # noqa: E402

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


def random_model(cfg: Human3RConfig, dtype: torch.dtype, device: str) -> Human3R:
    """Allocate directly in ``dtype`` (no float32 copy) and fill with small random values."""
    with torch.device("meta"):
        model = Human3R(cfg)
    model = model.to(dtype).to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # LayerNorm scales
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
        for b in model.buffers():
            b.zero_()
    return model


def force_detections(model: Human3R, n: int) -> None:
    """Make the detector fire on n separated cells in the middle rows of the token grid."""
    r = model.cfg.bb_token_res
    cells = [(r // 2) * r + (c + 1) * r // (n + 1) for c in range(n)]

    def hook(_module, _inputs, logits):
        forced = torch.full_like(logits, -10.0)
        forced[:, cells] = 10.0
        return forced

    model.downstream_head.mlp_classif.register_forward_hook(hook)


def instrument(model: Human3R, device: str):
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


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cfg = Human3RConfig.variant(args.variant)
    start = time.perf_counter()
    model = random_model(cfg, dtype, args.device)
    print(f"[{args.dtype}] {args.variant}: built and initialised in {time.perf_counter() - start:.1f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f} G params, "
          f"peak RSS {peak_rss_gib():.2f} GiB, {torch.get_num_threads()} threads", flush=True)
    force_detections(model, args.humans)
    times = instrument(model, args.device)

    gen = torch.Generator().manual_seed(1)
    img = (torch.rand(1, 3, args.height, args.width, generator=gen) * 2 - 1).to(args.device)
    res = cfg.mhmr_img_res
    img_mhmr = (torch.rand(1, 3, res, res, generator=gen) * 2 - 1).to(args.device)
    state, mem = model.initial_state()
    extra = frozenset(args.extra)
    totals = []
    for frame in range(args.frames):
        times.clear()
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.step(img, img_mhmr, state, mem, first=frame == 0, ttt3r=args.ttt3r, extra_outputs=extra)
        if args.device == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        totals.append(total)
        gate = out["ttt3r_gate"][..., None].to(dtype) if args.ttt3r and frame > 0 else 1.0
        state = gate * out["state_new"] + (1 - gate) * state
        mem = out["mem_new"]
        stages = "  ".join(f"{k} {v:.2f}" for k, v in times.items())
        print(f"[{args.dtype}] frame {frame}: {total:.2f} s (n={out['smpl_loc'].shape[1]})  {stages}  "
              f"other {total - sum(times.values()):.2f}; peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    steady = totals[1:] or totals
    print(f"[{args.dtype}] mean {sum(steady) / len(steady):.2f} s/frame over frames {1 if len(totals) > 1 else 0}.."
          f"{len(totals) - 1}; peak RSS {peak_rss_gib():.2f} GiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--variant", default="896L", help="released architecture: 672S, 672B, 672L, 896L")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--humans", type=int, default=2, help="forced number of detections")
    parser.add_argument("--ttt3r", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[], help="extra outputs: pts3d_in_other_view conf rgb")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
    for dtype in dtypes:
        # a fresh process per dtype so that each peak RSS is its own
        child_args = argparse.Namespace(**{**vars(args), "dtype": dtype})
        child = multiprocessing.get_context("spawn").Process(target=run, args=(child_args,))
        child.start()
        child.join()
        if child.exitcode:
            sys.exit(child.exitcode)


if __name__ == "__main__":
    main()
