"""The demo's inputs: the rendered room, image folders, videos and rosbag2 image topics."""

import numpy as np
import cv2
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from h3r_ros.demo.scene import SyntheticSequence
from h3r_ros.demo.sources import open_source


def _frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_synthetic_room_renders_a_moving_textured_scene():
    scene = SyntheticSequence(frames=3, width=160, height=90, supersample=1)
    first, _, last = list(scene)
    assert first.shape == (90, 160, 3) and first.dtype == np.uint8
    assert first.std() > 20  # textures and figures, not a flat colour
    assert np.abs(first.astype(int) - last).mean() > 5  # the camera moves
    assert np.array_equal(first, scene.render(0))  # deterministic
    K = scene.K
    assert K[0, 2] == 80 and K[1, 2] == 45 and K[0, 0] == K[1, 1] > 0
    poses = [scene.cam_to_world(i) for i in range(3)]
    for pose in poses:
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3))
    assert np.linalg.norm(poses[-1][:3, 3] - poses[0][:3, 3]) > 0.5


def test_default_source_is_the_synthetic_room_with_intrinsics():
    source = open_source(None, frames=2, size=(128, 72))
    assert len(source.frames) == 2 and source.frames[0].shape == (72, 128, 3)
    assert source.K is not None and "synthetic" in source.description


def test_image_folder_in_name_order_with_stride(tmp_path):
    frames = _frames(5)
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path), frames=2, stride=2)
    assert source.K is None
    assert len(source.frames) == 2
    assert np.array_equal(source.frames[0], frames[0]) and np.array_equal(source.frames[1], frames[2])


def test_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    flat = [np.full((48, 64, 3), (i * 60, 100, 200 - i * 60), np.uint8) for i in range(4)]
    for rgb in flat:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    source = open_source(str(path), frames=10)
    assert len(source.frames) == 4
    for got, want in zip(source.frames, flat):
        assert np.abs(got.astype(int) - want).mean() < 6  # JPEG-compressed, colour order kept


def test_rosbag_image_topics(tmp_path):
    store = get_typestore(Stores.ROS2_KILTED)
    Image, CompressedImage = store.types["sensor_msgs/msg/Image"], store.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    frames = _frames(3)
    bag = tmp_path / "bag"
    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        raw = writer.add_connection("/cam/image_raw", Image.__msgtype__, typestore=store)
        packed = writer.add_connection("/cam/image_raw/compressed", CompressedImage.__msgtype__, typestore=store)
        for i, rgb in enumerate(frames):
            header = Header(stamp=Time(sec=i, nanosec=0), frame_id="cam")
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            msg = Image(header=header, height=48, width=64, encoding="bgr8", is_bigendian=0, step=64 * 3,
                        data=bgr.reshape(-1))
            writer.write(raw, i, store.serialize_cdr(msg, Image.__msgtype__))
            png = np.frombuffer(cv2.imencode(".png", bgr)[1].tobytes(), np.uint8)
            writer.write(packed, i, store.serialize_cdr(CompressedImage(header=header, format="png", data=png),
                                                       CompressedImage.__msgtype__))

    for topic in ("/cam/image_raw", "/cam/image_raw/compressed"):
        source = open_source(str(bag), frames=5, topic=topic)
        assert len(source.frames) == 3
        assert all(np.array_equal(got, want) for got, want in zip(source.frames, frames)), topic
    with pytest.raises(ValueError, match="no image topic"):
        open_source(str(bag), frames=1, topic="/missing")
