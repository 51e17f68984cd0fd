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
  device memory (with --device cpu: the process's peak RSS);
- cameras: 672S serving 2 and 4 cameras with one model (each camera its own world, random
  frames), eager, per dtype: the frames batched in one round (``step_together``) and one camera
  after the other (``Human3REngine.step`` each): aggregate FPS, median round time, peak device
  memory.
Past --budget seconds the remaining speed and cameras rows are reported as skipped, not run.
Without a CUDA device (and no --device given) it says so and exits 0. The test suite drives
``speed_rows``, ``camera_rows`` and ``table`` on CPU with the fixtures' tiny model.
"""

from __future__ import annotations

import argparse
import functools
import itertools
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


def _bench_models():
    """scripts/bench_models.py, imported when first needed (it imports torch and the package)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_models

    return bench_models


def _peak_memory_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: str) -> str:
    """Peak device memory since ``_peak_memory_reset``; on CPU there is no per-run allocator
    peak: the process's peak RSS stands in."""
    import torch

    if device.startswith("cuda"):
        return f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB device"
    return f"peak {_bench_models().peak_rss_gib():.2f} GiB RSS"


def _random_model(cfg, dtype: str, device: str, humans: int):
    """A released architecture with random weights and ``humans`` forced detections per frame."""
    import torch

    _peak_memory_reset(device)
    model = _bench_models().random_model(cfg, getattr(torch, dtype), device)
    _bench_models().force_detections(model, humans)
    return model


def speed_row(name: str, cfg, dtype: str, compiled: bool, device: str, frames: int, warmup: int, humans: int,
              size: int = 512):
    """One configuration, random weights, on a 16:9 frame of ``size`` px width (the model input)."""
    from h3r_ros.engine.engine import EngineConfig, Human3REngine

    model = _random_model(cfg, dtype, device, humans)
    engine = Human3REngine(model, EngineConfig(size=size, device=device, dtype=dtype, compile=compiled,
                                               reset_interval=0))
    (rgb,) = _bench_models().camera_frames(1, size)
    warm = engine.warm_up(rgb.shape[1], rgb.shape[0], frames=warmup)  # as the node does at configure
    seconds = []
    for _ in range(frames):
        start = time.perf_counter()
        result = engine.step(rgb)  # ends with the host copy: the step is complete
        seconds.append(time.perf_counter() - start)
    fps = sorted(1.0 / s for s in seconds)
    median, p90 = statistics.median(fps), fps[int(0.1 * (len(fps) - 1))]  # p90 of frame time = p10 of FPS
    return (speed_label(name, dtype, compiled),
            f"{median:.2f} FPS median, {p90:.2f} FPS at p90 frame time, {len(result.people)} people, "
            f"{_peak_memory(device)}, warm-up {warm:.0f} s", "info")


def camera_label(name: str, dtype: str, cameras: int, batched: bool) -> str:
    return f"cameras {name} {dtype} x{cameras} {'batched' if batched else 'one after another'}"


def camera_row(name: str, cfg, dtype: str, cameras: int, batched: bool, device: str, frames: int, warmup: int,
               humans: int, size: int = 512):
    """``cameras`` engines over one model, one random 16:9 frame of ``size`` px width each per
    round: all in one ``step_together`` round (batched), or stepped one after the other."""
    from h3r_ros.engine.engine import EngineConfig, Human3REngine
    from h3r_ros.engine.multi_camera import step_together

    model = _random_model(cfg, dtype, device, humans)
    engines = [Human3REngine(model, EngineConfig(size=size, device=device, dtype=dtype, reset_interval=0))
               for _ in range(cameras)]
    rgbs = _bench_models().camera_frames(cameras, size)

    def serve():
        return step_together(engines, rgbs) if batched else [e.step(rgb) for e, rgb in zip(engines, rgbs)]

    for _ in range(warmup):
        serve()
    seconds = []
    for _ in range(frames):
        start = time.perf_counter()
        results = serve()  # each result ends with its host copy: the round is complete
        seconds.append(time.perf_counter() - start)
    people = "/".join(str(n) for n in sorted({len(r.people) for r in results}))
    return (camera_label(name, dtype, cameras, batched),
            f"{cameras * frames / sum(seconds):.2f} FPS aggregate, {1e3 * statistics.median(seconds):.0f} ms per "
            f"round median, {people} people per frame, {_peak_memory(device)}", "info")


def _budgeted(jobs, started: float, budget: float):
    """Run (label, job) pairs one at a time, each job making its row; once ``budget`` seconds
    have passed since ``started`` (time.monotonic) the rest are skipped."""
    for label, job in jobs:
        if time.monotonic() - started > budget:
            yield label, f"skipped: past the {budget:.0f} s budget", "SKIP"
            continue
        try:
            yield job()
        except Exception as exc:  # noqa: BLE001 - one failing configuration must not hide the others
            yield label, f"{type(exc).__name__}: {exc}"[:200], "FAIL"


def speed_rows(models, dtypes, compiles, device: str, frames: int, warmup: int, humans: int, started: float,
               budget: float):
    """Rows for every (name, config, size) in ``models`` x dtype x compile, one at a time; once
    ``budget`` seconds have passed since ``started`` (time.monotonic) the rest are skipped."""
    return _budgeted(((speed_label(name, dtype, compiled),
                       functools.partial(speed_row, name, cfg, dtype, compiled, device, frames, warmup, humans, size))
                      for name, cfg, size in models for dtype in dtypes for compiled in compiles), started, budget)


def camera_rows(models, dtypes, counts, device: str, frames: int, warmup: int, humans: int, started: float,
                budget: float):
    """Rows for every (name, config, size) in ``models`` x dtype x camera count, batched then one
    after another, within the budget as ``speed_rows``."""
    return _budgeted(((camera_label(name, dtype, n, batched),
                       functools.partial(camera_row, name, cfg, dtype, n, batched, device, frames, warmup, humans,
                                         size))
                      for name, cfg, size in models for dtype in dtypes for n in counts for batched in (True, False)),
                     started, budget)


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
    parser.add_argument("--humans", type=int, default=2, help="forced detections in the speed and cameras rows")
    parser.add_argument("--camera-variants", nargs="*", default=["672S"], help="models of the cameras rows")
    parser.add_argument("--cameras", type=int, nargs="*", default=[2, 4], help="camera counts of the cameras rows")
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
    camera_models = [(variant, Human3RConfig.variant(variant), 512) for variant in args.camera_variants]
    for row in itertools.chain(
        speed_rows(models, args.dtypes, compiles, device, args.frames, args.warmup, args.humans, started, args.budget),
        camera_rows(camera_models, args.dtypes, args.cameras, device, args.frames, args.warmup, args.humans, started,
                    args.budget),
    ):
        rows.append(row)
        print(*row, sep=" | ", flush=True)
    print("\n" + table(rows, time.monotonic() - started))
    return 1 if any(verdict == "FAIL" for _, _, verdict in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
