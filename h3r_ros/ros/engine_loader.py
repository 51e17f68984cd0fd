"""Settings -> a ready Human3R engine: file look-up, device choice, weights, SMPL-X.

Every failure is a LoadError whose text tells the user what to fix; the node logs it and
stays unconfigured. A missing SMPL-X model is not a failure: the engine then runs in the
people-without-bodies mode (``LoadedEngine.warning`` says so and where the file goes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from h3r_ros.engine.body_model import SMPLX_FILE, BodyModel
from h3r_ros.engine.engine import DTYPES, EngineConfig, Human3REngine
from h3r_ros.engine.precision import Precision, resolve_precision
from h3r_ros.model.checkpoint import load_human3r
from h3r_ros.model.config import Human3RConfig
from h3r_ros.model.human3r import Human3R

# The engine's world = the first camera's frame (exactly: origin_at_first_camera) re-expressed
# with ROS axes (x forward, y left, z up) instead of OpenCV optical axes (x right, y down, z forward).
ROS_FROM_OPTICAL = (
    (0.0, 0.0, 1.0, 0.0),
    (-1.0, 0.0, 0.0, 0.0),
    (0.0, -1.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 1.0),
)
_PREFERRED_CHECKPOINTS = ("human3r_896L", "human3r")


class LoadError(RuntimeError):
    """The engine cannot be built from the current parameters."""


@dataclass
class LoadedEngine:
    engine: Human3REngine
    faces: np.ndarray | None  # (F, 3) SMPL-X triangles, for mesh markers; None without a body model
    device: torch.device
    precision: Precision  # the dtype it runs in, and why
    description: str  # what was loaded, for logs and diagnostics
    warning: str = ""  # what is missing (SMPL-X), for the configure log

    def device_report(self) -> tuple[str, dict[str, str]]:
        """The device's name and memory figures, for /diagnostics."""
        device = self.device
        if device.type != "cuda":
            return str(device), {}
        return f"{device} ({torch.cuda.get_device_name(device)})", {
            "device memory allocated (MiB)": f"{torch.cuda.memory_allocated(device) / 2**20:.0f}",
            "device memory peak (MiB)": f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}",
        }


def models_dirs() -> list[Path]:
    """Where '' for checkpoint / smplx_dir looks: models/ of a source checkout, then the
    installed package's share/h3r_ros/models."""
    dirs = []
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "package.xml").is_file():
        dirs.append(checkout / "models")
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            dirs.append(Path(get_package_share_directory("h3r_ros")) / "models")
        except (PackageNotFoundError, OSError):  # not installed, or AMENT_PREFIX_PATH unset
            pass
    except ImportError:  # no ament index outside a ROS installation
        pass
    return dirs


def find_checkpoint(directories: list[Path]) -> Path | None:
    """The Human3R checkpoint in ``directories``: the first folder with any human3r*.pth or
    human3r*.safetensors, the released names preferred."""
    for directory in directories:
        found = sorted(directory.glob("human3r*.pth")) + sorted(directory.glob("human3r*.safetensors"))
        if found:
            return min(found, key=lambda p: (p.stem not in _PREFERRED_CHECKPOINTS, p.suffix != ".pth", p.name))
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise LoadError(f"device {name!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:N')") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LoadError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LoadError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise LoadError(f"device {name!r} is not supported ('auto', 'cpu', 'cuda', 'cuda:N')")
    return device


def _checkpoint_path(settings) -> Path | None:
    """The checkpoint to load; None means random weights (only when allowed)."""
    if settings.checkpoint:
        path = Path(settings.checkpoint).expanduser()
        if not path.is_file():
            raise LoadError(f"checkpoint {path} does not exist (parameter 'checkpoint')")
        return path
    searched = models_dirs()
    path = find_checkpoint(searched)
    if path is None and not settings.allow_random_weights:
        raise LoadError(
            "no checkpoint: set the 'checkpoint' parameter or put human3r*.pth in "
            + (" or ".join(str(d) for d in searched) or "models/")
            + " (allow_random_weights:=true runs with random weights, for testing only)"
        )
    return path


def _load_model(path: Path | None, settings, device: torch.device, dtype_name: str):
    dtype = DTYPES[dtype_name]
    variant = settings.variant or None
    if path is None:
        cfg = Human3RConfig.variant(variant or "896L")
        with torch.device(device):
            model = Human3R(cfg)
        return model.to(dtype=dtype).eval(), f"RANDOM WEIGHTS ({variant or '896L'})"
    try:
        model, _ = load_human3r(path, device=device, dtype=dtype, variant=variant)
    except Exception as exc:  # noqa: BLE001 - any unreadable file must leave the node unconfigured
        raise LoadError(f"cannot load checkpoint {path}: {exc}") from exc
    return model, str(path)


def _load_body_model(settings, device: torch.device) -> tuple[BodyModel | None, str]:
    """(body model, '') or, when no SMPL-X file is found, (None, what is missing and where
    to put it). An unreadable file is a LoadError."""
    if settings.smplx_dir:
        candidates = [Path(settings.smplx_dir).expanduser()]
    else:
        candidates = models_dirs()
    for candidate in candidates:
        try:
            return BodyModel(candidate, device=device), ""
        except FileNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001 - corrupt npz, wrong arrays, ...
            raise LoadError(f"SMPL-X model in {candidate} is unreadable: {exc}") from exc
    looked = ", ".join(str(c) for c in candidates) or "no models/ folder"
    where = (f"{candidates[0]}/{SMPLX_FILE}" if settings.smplx_dir
             else (f"{candidates[0]}/smplx/{SMPLX_FILE}" if candidates else f"models/smplx/{SMPLX_FILE}"))
    return None, (
        f"no SMPL-X model ({SMPLX_FILE}; looked in {looked}): running in people-without-bodies mode, "
        "humans carry track id, score, head position and SMPL-X pose/shape parameters but no joints, "
        "pelvis pose or mesh (Human.has_body is false), markers show heads only. For bodies, download "
        f"SMPL-X v1.1 (https://smpl-x.is.tue.mpg.de, registration required) and put {SMPLX_FILE} at "
        f"{where} (or set the parameter 'smplx_dir')."
    )


# torch's own choice (one thread per core). The thread count is process-wide: configure sets
# it from cpu_threads, cleanup puts this back.
_DEFAULT_CPU_THREADS = torch.get_num_threads()


def restore_cpu_threads() -> None:
    torch.set_num_threads(_DEFAULT_CPU_THREADS)


def load_engine(settings, progress: Callable[[str], None] = lambda text: None) -> LoadedEngine:
    """Build the engine described by a parameters.Settings; raises LoadError. ``progress(text)``
    is told what is being loaded, step by step."""
    progress("choosing the device")
    device = resolve_device(settings.device)
    torch.set_num_threads(settings.cpu_threads or _DEFAULT_CPU_THREADS)
    try:
        precision = resolve_precision(settings.dtype, device)
        config = EngineConfig(
            size=settings.input_size,
            ttt3r=settings.ttt3r,
            reset_interval=settings.reset_interval,
            max_humans=settings.max_people or None,
            det_threshold=settings.detection_threshold,
            match_threshold=settings.track_match_threshold,
            device=str(device),
            dtype=precision.dtype,
            compile=settings.compile,
            world_from_model=ROS_FROM_OPTICAL,
            origin_at_first_camera=True,
        )
    except ValueError as exc:
        raise LoadError(str(exc)) from exc
    checkpoint = _checkpoint_path(settings)  # cheap checks first: fail fast
    progress("loading the SMPL-X body model")
    body_model, warning = _load_body_model(settings, device)
    progress(f"checking and loading the checkpoint {checkpoint}" if checkpoint is not None
             else "building a model with random weights")
    model, source = _load_model(checkpoint, settings, device, precision.dtype)
    engine = Human3REngine(model, config, body_model)
    warm_up = ""
    if settings.compile:
        size = f"{settings.compile_image_width}x{settings.compile_image_height}"
        progress(f"compiling the model for {size} frames")
        try:
            seconds = engine.warm_up(settings.compile_image_width, settings.compile_image_height)
        except Exception as exc:  # noqa: BLE001 - no C++ compiler, an unsupported op, ...
            raise LoadError(f"compile failed for {size} frames ({type(exc).__name__}: {exc}); "
                            "set compile to false to run the model uncompiled") from exc
        warm_up = f", compiled for {size} in {seconds:.0f} s"
    faces = None if body_model is None else body_model.faces.detach().cpu().numpy().astype(np.int64)
    bodies = "no SMPL-X: people without bodies" if body_model is None else "SMPL-X bodies"
    details = f"{precision.dtype}, CPU threads {torch.get_num_threads()}{warm_up}"
    return LoadedEngine(engine, faces, device, precision, f"{source} on {device} ({details}), {bodies}", warning)
