"""Shared pieces of the node tests: a tiny random Human3R checkpoint, synthetic frames and
SMPL-X, and an in-process ROS harness (own context, executor thread, probe node).

Nothing here reads ../shared: the model is the fixtures' tiny configuration with random
weights, saved to a temporary checkpoint once per test process.
"""

from __future__ import annotations

import array
import atexit
import functools
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The reference fixtures' tiny configuration (fixture_structure.txt, 'config').
TINY_MODEL_KWARGS = dict(
    state_size=96, state_pe="2d", pos_embed="RoPE100", rgb_head=True, pose_head=True, msk_head=True,
    head_type="dpt", output_mode="pts3d+pose+smpl", depth_mode=("exp", -float("inf"), float("inf")),
    conf_mode=("exp", 1, float("inf")), pose_mode=("exp", -float("inf"), float("inf")),
    enc_embed_dim=128, enc_depth=2, enc_num_heads=4, dec_embed_dim=128, dec_depth=4, dec_num_heads=4,
    landscape_only=False, backbone="dinov2_vits14", mhmr_img_res=280,
)
TINY_INPUT_SIZE = 160  # model input long side (the fixtures' demo_size)
FRAME_HW = (180, 320)
_COMPACT_MIN_NUMEL = 4096
_DETECTION_LOGIT = float(np.log(0.3 / 0.7))  # sigmoid^-1 of the 0.3 detection threshold


def _literal(value) -> str:
    if isinstance(value, float) and np.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ")"
    return repr(value)


def tiny_model_string() -> str:
    """The constructor string a training checkpoint would carry for the tiny model."""
    args = ", ".join(f"{k}={_literal(v)}" for k, v in TINY_MODEL_KWARGS.items())
    return f"ARCroco3DStereo(ARCroco3DStereoConfig({args}))"


def synthetic_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 frames: a colour gradient with a few blocks drifting across it."""
    rng = np.random.default_rng(seed)
    h, w = FRAME_HW
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], axis=-1).astype(np.uint8)
    blocks = [(rng.integers(0, h - 60), rng.integers(0, w - 40), rng.integers(0, 256, 3)) for _ in range(3)]
    frames = []
    for i in range(n):
        frame = base.copy()
        for top, left, color in blocks:
            x = (left + 17 * i) % (w - 40)
            frame[top : top + 60, x : x + 40] = color
        frames.append(frame)
    return frames


def _compact(state_dict: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Replace large tensors by strided views of a short random vector with the same mean and
    std (the saved file stays a few MB); aliased keys keep sharing one tensor."""
    out, by_storage = {}, {}
    for key, value in state_dict.items():
        if value.numel() <= _COMPACT_MIN_NUMEL or not value.is_floating_point():
            out[key] = value.clone()
            continue
        ptr = value.data_ptr()
        if ptr not in by_storage:
            strides = [1, 3, 7, 13, 29][: value.dim()][::-1]
            length = 1 + sum((n - 1) * s for n, s in zip(value.shape, strides))
            sample = value.reshape(-1)[::101].float()  # enough for the statistics, and fast
            base = torch.randn(length, generator=generator) * sample.std() + sample.mean()
            by_storage[ptr] = base.as_strided(value.shape, strides)
        out[key] = by_storage[ptr]
    return out


def _peak_logits(logits: torch.Tensor, res: int) -> np.ndarray:
    """Detector logits at 3x3 local maxima (the model's NMS), sorted descending."""
    grid = logits.reshape(1, 1, res, res).float()
    peak = torch.nn.functional.max_pool2d(grid, 3, stride=1, padding=1) == grid
    return np.sort(grid[peak].numpy())[::-1]


def _calibrate_detector(model, frames: list[np.ndarray]) -> None:
    """Shift the detector bias so a typical frame has about two detections (random weights
    otherwise detect everyone or no one)."""
    from h3r_ros.engine.preprocess import pad_image, resize_and_crop, to_model_input

    state, mem = model.initial_state()
    middles = []
    for frame in frames:
        img = to_model_input(resize_and_crop(frame, TINY_INPUT_SIZE)[0])
        out = model.step(img, pad_image(img, model.cfg.mhmr_img_res), state, mem, first=True, debug=True)
        peaks = _peak_logits(out["classif_logit"], model.cfg.bb_token_res)
        middles.append(0.5 * (peaks[1] + peaks[2]))
    with torch.no_grad():
        model.downstream_head.mlp_classif[2].bias += _DETECTION_LOGIT - float(np.median(middles))


def write_tiny_checkpoint(path: Path, frames: list[np.ndarray], seed: int = 0) -> Path:
    """A training-format checkpoint ({'model': state dict, 'args': {'model': string}}) of the
    tiny model with random weights, plausible depths and a calibrated detector."""
    from h3r_ros.model.config import Human3RConfig
    from h3r_ros.model.human3r import Human3R
    from h3r_ros.model.model_string import parse_model_string

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Human3R(Human3RConfig.from_kwargs(parse_model_string(tiny_model_string()))).eval()
    compact = _compact(model.state_dict(), generator)
    model.load_state_dict(compact, strict=True)
    head = model.downstream_head
    with torch.no_grad():
        # As in the reference fixtures: scene about 3 m in front, people about 4 m away.
        head.dpt_self.head[4].bias[2] += 1.4
        head.dpt_cross.head[4].bias[2] += 1.4
        head.deccam.mlp.layers[2].bias[2] += 1.6
    _calibrate_detector(model, frames[:4])
    # Only small tensors were adjusted: large ones are saved as their compact views.
    state_dict = {k: (compact[k] if v.numel() > _COMPACT_MIN_NUMEL else v) for k, v in model.state_dict().items()}
    torch.save({"model": state_dict, "args": {"model": tiny_model_string()}}, path)
    return path


@dataclass(frozen=True)
class TinyAssets:
    checkpoint: Path
    smplx_dir: Path
    frames: tuple[np.ndarray, ...]

    def parameters(self, **overrides) -> dict:
        """Node parameters for the tiny model. Its random weights give confidences of about
        2.09 (the threshold keeps about half) and a human mask that covers everything."""
        return dict(
            checkpoint=str(self.checkpoint),
            smplx_dir=str(self.smplx_dir),
            device="cpu",
            dtype="float32",  # the thresholds below are set for fp32 outputs, the same on every CPU
            input_size=TINY_INPUT_SIZE,
            cloud_conf_threshold=2.095,
            map_exclude_humans=False,
            map_publish_period=0.0,
            diagnostics_period=0.2,
        ) | overrides


@functools.lru_cache(maxsize=1)
def tiny_assets() -> TinyAssets:
    """Built once per test process, removed at exit."""
    from h3r_ros.demo.synthetic_smplx import write_synthetic_smplx

    directory = Path(tempfile.mkdtemp(prefix="h3r_node_test_"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    frames = synthetic_frames(8)
    write_synthetic_smplx(directory)
    checkpoint = write_tiny_checkpoint(directory / "human3r_tiny.pth", frames)
    return TinyAssets(checkpoint, directory, tuple(frames))


def settings_for(params: dict):
    """parameters.Settings with the given overrides (what the node would read)."""
    from h3r_ros.ros.parameters import Settings

    return Settings(**params)


# ---------------------------------------------------------------------------------------------
# Independent decoding of what the node publishes


def matrix_from_quaternion(x, y, z, w) -> np.ndarray:
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rigid(rot, trans):
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot, trans
    return t


def decode_cloud(msg):
    """Independent PointCloud2 reader (fields by name and offset)."""
    assert msg.height == 1 and msg.row_step == msg.point_step * msg.width
    offsets = {f.name: (f.offset, f.datatype, f.count) for f in msg.fields}
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.width, msg.point_step)
    xyz = np.stack([raw[:, offsets[a][0]: offsets[a][0] + 4].copy().view("<f4")[:, 0] for a in "xyz"], axis=1)
    packed = raw[:, offsets["rgb"][0]: offsets["rgb"][0] + 4].copy().view("<u4")[:, 0]
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return xyz, rgb, offsets


# ---------------------------------------------------------------------------------------------
# ROS


def image_msg(rgb: np.ndarray, stamp, frame_id: str = "camera_optical", encoding: str = "rgb8", pad: int = 0):
    """sensor_msgs/Image of an RGB array in the given 8-bit encoding, rows padded by ``pad`` bytes."""
    import cv2
    from sensor_msgs.msg import Image

    conversions = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA,
                   "bgra8": cv2.COLOR_RGB2BGRA, "mono8": cv2.COLOR_RGB2GRAY}
    pixels = rgb if conversions[encoding] is None else cv2.cvtColor(rgb, conversions[encoding])
    h, w = rgb.shape[:2]
    row = pixels.reshape(h, -1)
    rows = np.zeros((h, row.shape[1] + pad), np.uint8)
    rows[:, : row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=False, step=rows.shape[1])
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = array.array("B", rows.tobytes())
    return msg


def stamp_of(seconds: float):
    from builtin_interfaces.msg import Time

    sec = int(np.floor(seconds))
    return Time(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))


def stamp_key(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def wait_until(predicate, timeout: float = 10.0, period: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


class Collector:
    """Keeps every message received on one topic (callback runs on the harness thread)."""

    def __init__(self, node, msg_type, topic: str, qos) -> None:
        self._lock = threading.Lock()
        self._messages: list = []
        self._arrivals: list[int] = []  # time.time_ns() at reception (the ROS clock, no sim time)
        self.subscription = node.create_subscription(msg_type, topic, self._on_msg, qos)

    def _on_msg(self, msg) -> None:
        with self._lock:
            self._messages.append(msg)
            self._arrivals.append(time.time_ns())

    @property
    def messages(self) -> list:
        with self._lock:
            return list(self._messages)

    def arrivals(self) -> list[tuple[object, int]]:
        with self._lock:
            return list(zip(self._messages, self._arrivals))

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._arrivals.clear()

    def matched(self) -> bool:
        return self.subscription.get_publisher_count() > 0

    def wait_for(self, predicate=lambda msgs: bool(msgs), timeout: float = 10.0) -> list:
        assert wait_until(lambda: predicate(self.messages), timeout), f"timed out on {self.subscription.topic_name}"
        return self.messages

    def wait_stamp(self, stamp, timeout: float = 10.0, key=lambda m: m.header.stamp):
        """The last message whose ``key`` (default: header stamp) equals ``stamp``."""
        def matching(msgs):
            return [m for m in msgs if stamp_key(key(m)) == stamp_key(stamp)]

        return matching(self.wait_for(lambda msgs: bool(matching(msgs)), timeout))[-1]


class RosHarness:
    """One rclpy context spun by a background thread, with a probe node for test I/O."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.probe = rclpy.create_node("h3r_test_probe", context=self.context)
        self.executor.add_node(self.probe)
        self._nodes = [self.probe]
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, RuntimeError):
            pass  # context shut down under us at the end of a module

    def add_node(self, node):
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def remove_node(self, node) -> None:
        self.executor.remove_node(node)
        self._nodes.remove(node)
        node.destroy_node()

    def collect(self, msg_type, topic: str, qos=10) -> Collector:
        return Collector(self.probe, msg_type, topic, qos)

    def call(self, srv_type, name: str, request, timeout: float = 10.0, resend_after: float | None = None):
        """Call a service. With ``resend_after``, an unanswered request is sent again (for
        idempotent services: a request sent while the server is still being matched, or to
        a server that just exited, is lost)."""
        client = self.probe.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                future = client.call_async(request)
                wait = deadline - time.monotonic()
                if wait_until(future.done, wait if resend_after is None else min(resend_after, wait)):
                    return future.result()
                client.remove_pending_request(future)
            raise AssertionError(f"service {name} did not answer within {timeout} s")
        finally:
            self.probe.destroy_client(client)

    def close(self) -> None:
        import rclpy

        for node in reversed(self._nodes):
            self.executor.remove_node(node)
            node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)
        self.executor.shutdown()


def reference_selection(points, conf, rgb, conf_threshold, stride, max_points=None, exclude=None):
    """Cloud points as the node documents them, by plain iteration: every stride-th pixel with
    conf above the threshold, finite xyz and not excluded, evenly subsampled to max_points."""
    kept = [
        (r, c)
        for r in range(0, conf.shape[0], stride)
        for c in range(0, conf.shape[1], stride)
        if conf[r, c] > conf_threshold and np.isfinite(points[r, c]).all() and not (exclude is not None and exclude[r, c])
    ]
    if max_points is not None and len(kept) > max_points:
        kept = [kept[int(i)] for i in np.linspace(0, len(kept) - 1, max_points)]
    pts = np.array([points[r, c] for r, c in kept], np.float32).reshape(-1, 3)
    return pts, np.array([rgb[r, c] for r, c in kept], np.uint8).reshape(-1, 3)
