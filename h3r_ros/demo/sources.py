"""Input sequences for the demo: the synthetic room, a video, an image folder or a rosbag2.

Every source yields RGB uint8 frames; the demo republishes them as sensor_msgs/Image with
fresh stamps, like a live camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from h3r_ros.demo.scene import SyntheticSequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


@dataclass
class Source:
    """What to play: ``frames`` RGB arrays, optional true intrinsics, a description."""

    frames: list[np.ndarray]
    K: np.ndarray | None  # known intrinsics (published on camera_info), else None
    description: str


def open_source(
    path: str | None, frames: int, stride: int = 1, topic: str | None = None, size: tuple[int, int] = (512, 288)
) -> Source:
    """Load at most ``frames`` frames (every ``stride``-th) from ``path`` or the synthetic room."""
    if path is None:
        scene = SyntheticSequence(frames=frames, width=size[0], height=size[1])
        return Source(list(scene), scene.K, f"synthetic room, {frames} frames {size[0]}x{size[1]}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    if p.is_dir() and not (p / "metadata.yaml").is_file() and not any(p.glob("*.mcap")) and not any(p.glob("*.db3")):
        iterator, kind = _image_folder(p), "image folder"
    elif p.is_dir() or p.suffix in (".mcap", ".db3"):
        iterator, kind = _rosbag(p, topic), "rosbag2"
    else:
        iterator, kind = _video(p), "video"
    selected = list(islice(iterator, 0, frames * stride, stride))
    if not selected:
        raise ValueError(f"no frames read from {p}")
    h, w = selected[0].shape[:2]
    return Source(selected, None, f"{kind} {p}, {len(selected)} frames {w}x{h}")


def _image_folder(folder: Path) -> Iterator[np.ndarray]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {f}")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _video(path: Path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path} (OpenCV has no decoder for it?)")
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def _rosbag(path: Path, topic: str | None) -> Iterator[np.ndarray]:
    """Image or CompressedImage messages of ``topic`` (default: the first image topic)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from h3r_ros.ros.image_decoding import decode_compressed, decode_image

    bag = path.parent if path.is_file() else path
    with AnyReader([bag], default_typestore=get_typestore(Stores.LATEST)) as reader:
        images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        if topic is not None:
            images = [c for c in images if c.topic == topic]
        if not images:
            found = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
            raise ValueError(f"no image topic {topic or ''} in {bag}; topics: {', '.join(found)}")
        chosen = [c for c in images if c.topic == images[0].topic]
        for connection, _, raw in reader.messages(connections=chosen):
            msg = reader.deserialize(raw, connection.msgtype)
            # The node's own decoders take any object with the message's fields.
            yield decode_compressed(msg) if connection.msgtype.endswith("CompressedImage") else decode_image(msg)
