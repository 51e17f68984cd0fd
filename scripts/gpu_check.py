#!/usr/bin/env python3
"""GPU check of the engine (no ROS): parity, bf16 deviation and speed, as one table.

For a GPU machine without network: it runs on that machine's own Python and CUDA PyTorch;
the few pure-Python packages it needs and two reference fixtures come from an assets folder
made beforehand by ``scripts/gpu_wheels.sh``.

    bash scripts/gpu_wheels.sh build/gpu_check               # where the network is
    python3 scripts/gpu_check.py --assets build/gpu_check    # on the GPU machine

Rows:
- parity: the engine in float32 (TF32 off) on the device vs the official code's recorded
  outputs, with the CPU parity tests' tolerances (|a - b| <= 1e-4 + 1e-4 |b|; detections and
  track ids exact);
- bf16: bfloat16 vs float32 on the same fixture frames (camera rotation, centre / scene
  distance, p99 point error / distance, focal);
- speed: 672S and 896L with random weights and 2-3 forced detections, float32 (TF32, as the
  official code runs) and bfloat16, eager and compiled: FPS of the whole engine step (RGB
  uint8 frame in -> host results out), median and p90 over the timed frames, and the peak
  device memory (with --device cpu: the process's peak RSS). Past --budget seconds the
  remaining speed rows are reported as skipped, not run.
Without a CUDA device (and no --device given) it says so and exits 0. The test suite drives
``speed_rows`` and ``table`` on CPU with the fixtures' tiny model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOSE = dict(rtol=1e-4, atol=1e-4)
RAW_KEYS = ("pts3d_in_self_view", "conf_self", "camera_pose", "smpl_rotmat", "smpl_shape", "smpl_expression",
            "smpl_transl", "smpl_loc")


def unpack_wheels(assets: Path) -> None:
    """Make the assets' wheels importable: unzip each once into assets/site (a wheel is a zip
    whose root is site-packages). Appended to the path: installed packages win."""
    site = assets / "site"
    for wheel in sorted((assets / "wheels").glob("*.whl")):
        marker = site / f".{wheel.name}.done"
        if not marker.exists():
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
            marker.touch()
    sys.path.append(str(site))


def worst_ratio(actual, expected) -> float:
    """max |a - b| / (atol + rtol |b|): <= 1 passes the tolerance."""
    import torch

    actual = torch.as_tensor(actual, dtype=torch.float32).cpu()
    expected = torch.as_tensor(expected, dtype=torch.float32).cpu()
    if actual.shape != expected.shape:
        return float("inf")
    if actual.numel() == 0:
        return 0.0
    return float(((actual - expected).abs() / (CLOSE["atol"] + CLOSE["rtol"] * expected.abs())).max())


def fixture_config(fx):
    """The model configuration a fixture was recorded with (the tiny model)."""
    import dataclasses

    from h3r_ros.model import Human3RConfig
    from h3r_ros.model.model_string import parse_model_string

    cfg = Human3RConfig.from_kwargs(parse_model_string(fx["model_str_yaml_form"]))
    # Recorded on CPU, where the official encoder RoPE runs on float16 tokens.
    return dataclasses.replace(cfg, encoder_rope_math="float16")


def fixture_model(fx, dtype=None):
    from h3r_ros.model import Human3R

    model = Human3R(fixture_config(fx))
    model.load_state_dict({k: v.contiguous() for k, v in fx["state_dict"].items()}, strict=True)
    return model.eval() if dtype is None else model.to(dtype).eval()


class _Recorder:
    """Wraps a model: keeps each view's raw outputs for comparison with the recording."""

    def __init__(self, model):
        self.inner, self.cfg, self.outputs = model, model.cfg, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to(self, *args, **kwargs):
        self.inner = self.inner.to(*args, **kwargs)
        return self

    def eval(self):
        self.inner.eval()
        return self

    def step(self, *args, **kwargs):
        out = self.inner.step(*args, **kwargs)
        self.outputs.append({k: out[k] for k in RAW_KEYS})
        return out


def parity_rows(fixture: Path, device: str) -> list[tuple[str, str, str]]:
    import torch

    from h3r_ros.engine.engine import EngineConfig, Human3REngine

    fx = torch.load(fixture, weights_only=True, map_location="cpu")
    recorder = _Recorder(fixture_model(fx))
    config = EngineConfig(size=fx["config"]["demo_size"], ttt3r=fx["use_ttt3r"], reset_interval=fx["reset_interval"],
                          device=device, tf32=False)
    engine = Human3REngine(recorder, config)
    frames = fx["preprocess"]["raw_frames_uint8"]
    results = [engine.step(frames[k].numpy()) for k in range(frames.shape[0])]
    raw = max(worst_ratio(out[key], ref[key]) for out, ref in zip(recorder.outputs, fx["outputs"]) for key in RAW_KEYS)
    post, kept = fx["post"], fx["post"]["kept_view_indices"]
    frame_ratio = max(
        max(worst_ratio(r.cam_to_world, post["cam2world"][k]), worst_ratio(r.K, post["K"][k]),
            worst_ratio(r.points_world, post["pts3d_world"][k]),
            worst_ratio(r.conf, fx["outputs"][kept[k]]["conf_self"][0]))
        for k, r in enumerate(results)
    )
    ids_exact = all(
        [p.track_id for p in r.people] == fx["outputs"][kept[k]]["smpl_id"][0].tolist() for k, r in enumerate(results)
    )
    counts = all(o["smpl_rotmat"].shape[1] == ref["smpl_rotmat"].shape[1]
                 for o, ref in zip(recorder.outputs, fx["outputs"]))
    name = fixture.stem
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    return [
        (f"parity {name}: raw outputs", f"worst {raw:.3f} of tolerance", verdict(raw <= 1.0)),
        (f"parity {name}: cameras, K, world points, conf", f"worst {frame_ratio:.3f} of tolerance",
         verdict(frame_ratio <= 1.0)),
        (f"parity {name}: detections and track ids", "exact" if counts and ids_exact else "differ",
         verdict(counts and ids_exact)),
    ]


def bf16_rows(fixture: Path, device: str) -> list[tuple[str, str, str]]:
    import torch

    from h3r_ros.engine.engine import EngineConfig, Human3REngine
    from h3r_ros.engine.precision import result_deviation

    fx = torch.load(fixture, weights_only=True, map_location="cpu")
    frames = [f.numpy() for f in fx["preprocess"]["raw_frames_uint8"]]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        engine = Human3REngine(fixture_model(fx), EngineConfig(size=fx["config"]["demo_size"], reset_interval=0,
                                                               device=device, dtype=dtype, tf32=False))
        runs[dtype] = [engine.step(f) for f in frames]
    worst = result_deviation(runs["bfloat16"], runs["float32"])
    text = (f"rotation {worst['rotation']:.4f} rad, centre {worst['centre']:.4f} and p99 points "
            f"{worst['points']:.4f} of the distance, focal {worst['focal']:.4f}")
    return [(f"bf16 vs fp32 {fixture.stem}", text, "info")]


def speed_label(name: str, dtype: str, compiled: bool) -> str:
    return f"speed {name} {dtype} {'compiled' if compiled else 'eager'}"


def speed_row(name: str, cfg, dtype: str, compiled: bool, device: str, frames: int, warmup: int, humans: int,
              size: int = 512):
    """One configuration, random weights, on a 16:9 frame of ``size`` px width (the model input)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_models import force_detections, peak_rss_gib, random_model

    from h3r_ros.engine.engine import EngineConfig, Human3REngine

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = random_model(cfg, getattr(torch, dtype), device)
    force_detections(model, humans)
    engine = Human3REngine(model, EngineConfig(size=size, device=device, dtype=dtype, compile=compiled,
                                               reset_interval=0))
    rgb = np.random.default_rng(0).integers(0, 256, (size * 9 // 16, size, 3), dtype=np.uint8)
    warm = engine.warm_up(rgb.shape[1], rgb.shape[0], frames=warmup)  # as the node does at configure
    seconds = []
    for _ in range(frames):
        start = time.perf_counter()
        result = engine.step(rgb)  # ends with the host copy: the step is complete
        seconds.append(time.perf_counter() - start)
    fps = sorted(1.0 / s for s in seconds)
    median, p90 = statistics.median(fps), fps[int(0.1 * (len(fps) - 1))]  # p90 of frame time = p10 of FPS
    # On CPU there is no per-run allocator peak: the process's peak RSS stands in.
    memory, where = (torch.cuda.max_memory_allocated(device) / 2**30, "device") if cuda else (peak_rss_gib(), "RSS")
    del engine, model
    return (speed_label(name, dtype, compiled),
            f"{median:.2f} FPS median, {p90:.2f} FPS at p90 frame time, {len(result.people)} people, "
            f"peak {memory:.2f} GiB {where}, warm-up {warm:.0f} s", "info")


def speed_rows(models, dtypes, compiles, device: str, frames: int, warmup: int, humans: int, started: float,
               budget: float):
    """Rows for every (name, config, size) in ``models`` x dtype x compile, one at a time; once
    ``budget`` seconds have passed since ``started`` (time.monotonic) the rest are skipped."""
    for name, cfg, size in models:
        for dtype in dtypes:
            for compiled in compiles:
                label = speed_label(name, dtype, compiled)
                if time.monotonic() - started > budget:
                    yield label, f"skipped: past the {budget:.0f} s budget", "SKIP"
                    continue
                try:
                    yield speed_row(name, cfg, dtype, compiled, device, frames, warmup, humans, size)
                except Exception as exc:  # noqa: BLE001 - one failing configuration must not hide the others
                    yield label, f"{type(exc).__name__}: {exc}"[:200], "FAIL"


def table(rows, seconds: float) -> str:
    width = max((len(r[0]) for r in rows), default=len("check"))
    lines = [f"{'check':<{width}}  result"]
    lines += [f"{name:<{width}}  {verdict:<4}  {value}" for name, value, verdict in rows]
    return "\n".join(lines + [f"(total {seconds:.0f} s)"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, help="folder made by scripts/gpu_wheels.sh (wheels/, fixtures/)")
    parser.add_argument("--device", help="default: cuda when available, else report and exit 0")
    parser.add_argument("--parity", nargs="*", default=["h3r_tiny_base", "h3r_tiny_reset3_ttt3r"],
                        help="fixtures to check parity on (the bf16 row uses the first)")
    parser.add_argument("--variants", nargs="*", default=["672S", "896L"])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--compile", choices=("off", "on", "both"), default="both")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per speed row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--humans", type=int, default=2, help="forced detections in the speed rows")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later speed rows are skipped past it")
    args = parser.parse_args()
    if args.assets is not None:
        unpack_wheels(args.assets)
    sys.path.insert(0, str(ROOT))
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return 0
    from h3r_ros.engine.precision import bf16_capability

    started = time.monotonic()
    print(f"gpu_check: torch {torch.__version__}, device {device}: {bf16_capability(device)[1]}", flush=True)
    fixtures_dir = args.assets / "fixtures" if args.assets is not None else ROOT.parent / "shared" / "fixtures"
    fixtures = [fixtures_dir / f"{name}.pt" for name in args.parity]
    rows = []
    for fixture in fixtures:
        if fixture.exists():
            rows += parity_rows(fixture, device)
        else:
            rows.append((f"parity {fixture.stem}", f"fixture not found at {fixture}", "SKIP"))
        print(*rows[-1], sep=" | ", flush=True)
    if fixtures and fixtures[0].exists() and "bfloat16" in args.dtypes:
        rows += bf16_rows(fixtures[0], device)
        print(*rows[-1], sep=" | ", flush=True)
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    from h3r_ros.model import Human3RConfig

    models = [(variant, Human3RConfig.variant(variant), 512) for variant in args.variants]
    for row in speed_rows(models, args.dtypes, compiles, device, args.frames, args.warmup, args.humans, started,
                          args.budget):
        rows.append(row)
        print(*row, sep=" | ", flush=True)
    print("\n" + table(rows, time.monotonic() - started))
    return 1 if any(verdict == "FAIL" for _, _, verdict in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
