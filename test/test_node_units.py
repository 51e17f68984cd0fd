"""Node building blocks without DDS: decoding, conversions, markers, map, worker, parameters."""

import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from ros_helpers import decode_cloud, image_msg, matrix_from_quaternion, rigid, settings_for, stamp_of, tiny_assets, wait_until
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointField
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from h3r_ros.engine.fusion import FusedTrack
from h3r_ros.engine.track_motion import ENDED, LOST, TRACKED, TrackInfo
from h3r_ros.ros import conversions, parameters
from h3r_ros.ros.camera_info_check import camera_info_problem
from h3r_ros.ros.diagnostics import BAD, DROPPED, RECEIVED, NodeState, NodeStats, diagnostics_msg, node_status
from h3r_ros.model import Human3R
from h3r_ros.ros.engine_loader import LoadError, find_checkpoint, load_engine, resolve_device
from h3r_ros.ros.image_decoding import ImageDecodeError, check_image, decode_compressed, decode_image
from h3r_ros.ros.inference_worker import InferenceWorker
from h3r_ros.ros.map_accumulator import VoxelMap
from h3r_ros.ros.markers import BONES, BONES_NS, JOINTS_NS, MESH_NS, NAMESPACES, TrackMarkers

REPO = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)


def random_rotation(rng=RNG) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ------------------------------------------------------------------ image decoding

@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 7])
def test_colour_encodings_with_row_padding_decode_to_rgb(encoding, pad):
    rgb = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    msg = image_msg(rgb, stamp_of(1.0), encoding=encoding, pad=pad)
    msg.is_bigendian = True  # irrelevant for 8-bit channels
    out = decode_image(msg)
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, rgb)


def test_mono8_is_replicated_to_three_channels():
    rgb = RNG.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    msg = image_msg(rgb, stamp_of(1.0), encoding="mono8", pad=3)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(decode_image(msg), np.repeat(grey[..., None], 3, axis=-1))


def packed_msg(pixels: np.ndarray, encoding: str, bigendian: bool = False, pad: int = 0):
    """sensor_msgs/Image holding ``pixels`` (H, W[, C], uint8 or uint16) as they are, 16-bit
    values in the given byte order, rows padded by ``pad`` bytes."""
    h, w = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = np.zeros((h, w * pixels.itemsize * (pixels.size // (h * w)) + pad), np.uint8)
    rows[:, : rows.shape[1] - pad] = pixels.view(np.uint8).reshape(h, -1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=bigendian, step=rows.shape[1],
                 data=rows.tobytes())


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_mosaics_demosaic_to_the_colours_they_sample(pattern, bits):
    """A mosaic sampled from an image of flat colour blocks, each pixel keeping the channel
    ROS's pattern name gives its position in the 2x2 cell (row by row): inside each block,
    away from its edges, the demosaiced image is that block's colour."""
    colours = RNG.integers(0, 256, (3, 4, 3))
    block = 8
    image = np.repeat(np.repeat(colours, block, axis=0), block, axis=1)
    channel = {"r": 0, "g": 1, "b": 2}
    mosaic = np.zeros(image.shape[:2], np.uint16)
    for index, name in enumerate(pattern):
        row, col = divmod(index, 2)
        mosaic[row::2, col::2] = image[row::2, col::2, channel[name]]
    if bits == 16:
        mosaic *= 257  # the 8-bit colour at full 16-bit scale: scales back exactly
    msg = packed_msg(mosaic.astype(np.uint8) if bits == 8 else mosaic, f"bayer_{pattern}{bits}", bigendian=True, pad=2)
    out = decode_image(msg)
    assert out.shape == image.shape and out.dtype == np.uint8
    inner = slice(2, block - 2)
    for r, c in np.ndindex(colours.shape[:2]):
        cell = out[r * block: (r + 1) * block, c * block: (c + 1) * block][inner, inner]
        assert (cell == colours[r, c]).all(), (r, c, cell[0, 0], colours[r, c])


@pytest.mark.parametrize("encoding, order", [("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV"), ("yuv422", "UYVY"), ("uyvy", "UYVY")])
def test_yuv422_frames_decode_by_bt601(encoding, order):
    """Luma per pixel, chroma shared by each pair of pixels, every value within video range:
    RGB is ITU-R BT.601 (16-235 luma, 16-240 chroma), as OpenCV's and cv_bridge's conversion."""
    h, w = 6, 10
    y = RNG.integers(16, 236, (h, w)).astype(float)
    u, v = (np.repeat(RNG.integers(16, 241, (h, w // 2)), 2, axis=1).astype(float) for _ in range(2))
    rgb = np.stack([1.164 * (y - 16) + 1.596 * (v - 128),
                    1.164 * (y - 16) - 0.813 * (v - 128) - 0.391 * (u - 128),
                    1.164 * (y - 16) + 2.018 * (u - 128)], axis=-1)
    expected = np.clip(np.round(rgb), 0, 255)
    packed = np.zeros((h, w, 2), np.uint8)
    luma, chroma = (0, 1) if order == "YUYV" else (1, 0)
    packed[..., luma] = y
    packed[:, 0::2, chroma], packed[:, 1::2, chroma] = u[:, 0::2], v[:, 1::2]
    out = decode_image(packed_msg(packed, encoding, pad=3))
    assert out.dtype == np.uint8
    assert np.abs(out.astype(float) - expected).max() <= 1


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["mono16", "rgb16", "bgr16", "rgba16", "bgra16"])
def test_16_bit_images_are_scaled_as_cv_bridge_does(encoding, bigendian):
    """Every 16-bit value once per channel: 8-bit value = round(v x 255 / 65535), cv_bridge's
    scaling, after the channels are put in RGB order."""
    ramp = np.arange(65536, dtype=np.int64).reshape(256, 256)
    rgb = np.stack([ramp, 65535 - ramp, RNG.permutation(ramp.ravel()).reshape(ramp.shape)], axis=-1)
    alpha = RNG.integers(0, 65536, ramp.shape)
    channels = {"mono16": [ramp], "rgb16": [rgb[..., 0], rgb[..., 1], rgb[..., 2]],
                "bgr16": [rgb[..., 2], rgb[..., 1], rgb[..., 0]],
                "rgba16": [rgb[..., 0], rgb[..., 1], rgb[..., 2], alpha],
                "bgra16": [rgb[..., 2], rgb[..., 1], rgb[..., 0], alpha]}[encoding]
    pixels = np.stack(channels, axis=-1).astype(np.uint16)
    expected = np.round((rgb if encoding != "mono16" else ramp[..., None].repeat(3, -1)) * 255 / 65535)
    out = decode_image(packed_msg(pixels, encoding, bigendian, pad=4))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(encoding="16UC1"), "depth image"),
        (dict(encoding="32FC1"), "depth image"),
        (dict(encoding="nv21"), "unsupported encoding"),
        (dict(width=0, height=0, step=0), "empty"),
        (dict(step=5), "step"),
        (dict(height=5), "bytes"),
        (dict(encoding="rgb16"), "step 9 < width 3 x 6 bytes"),
        (dict(encoding="yuv422", step=8, data=bytes(32)), "odd width"),
        (dict(encoding="mono16", step=9, data=bytes(36)), "16-bit"),
    ],
)
def test_bad_raw_images_are_rejected(change, reason):
    msg = image_msg(np.zeros((4, 3, 3), np.uint8), stamp_of(1.0))
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageDecodeError, match=reason):
        check_image(msg)


@pytest.mark.parametrize("ext, fmt", [(".jpg", "jpeg"), (".png", "rgb8; png compressed bgr8")])
def test_compressed_images_decode_to_rgb(ext, fmt):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = decode_compressed(CompressedImage(format=fmt, data=buffer.tobytes()))
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - rgb).max() <= 3


@pytest.mark.parametrize("fmt, data, reason", [
    ("jpeg", b"", "empty"),
    ("jpeg", b"not an image", "neither jpeg nor png"),
    ("jpeg", b"\xff\xd8\xff" + b"\x00" * 40, "unreadable jpeg header"),
    ("png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "unreadable png header"),
    ("webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "unsupported compressed format"),
    ("16UC1; compressedDepth", b"\x00" * 20, "compressed"),
    ("tiff", b"\x00" * 20, "unsupported compressed format"),
])
def test_bad_compressed_images_are_rejected(fmt, data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_compressed(CompressedImage(format=fmt, data=data))


# ------------------------------------------------------------------ conversions

def test_quaternion_round_trip_including_near_180_degrees():
    rotations = [random_rotation() for _ in range(50)]
    rotations += [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]), np.eye(3)]
    for rot in rotations:
        q = conversions.quaternion_from_matrix(rot)
        assert math.isclose(np.linalg.norm(q), 1.0, rel_tol=1e-9) and q[3] >= 0
        np.testing.assert_allclose(matrix_from_quaternion(*q), rot, atol=1e-9)


def transform_matrix(transform) -> np.ndarray:
    r, t = transform.rotation, transform.translation
    return rigid(matrix_from_quaternion(r.x, r.y, r.z, r.w), [t.x, t.y, t.z])


def test_tf_modes_publish_the_pose_or_its_inverse():
    cam_to_world = rigid(random_rotation(), [1.0, -2.0, 0.5])
    stamp = stamp_of(3.5)
    forward = conversions.camera_transform(cam_to_world, "world", "cam", "world_to_camera", stamp)
    assert (forward.header.frame_id, forward.child_frame_id) == ("world", "cam")
    assert forward.header.stamp == stamp
    inverse = conversions.camera_transform(cam_to_world, "world", "cam", "camera_to_world", stamp)
    assert (inverse.header.frame_id, inverse.child_frame_id) == ("cam", "world")
    for msg, expected in ((forward, cam_to_world), (inverse, np.linalg.inv(cam_to_world))):
        np.testing.assert_allclose(transform_matrix(msg.transform), expected, atol=1e-9)
    assert conversions.camera_transform(cam_to_world, "world", "cam", "none", stamp) is None


def fake_person(track_id=3, with_vertices=False):
    rng = np.random.default_rng(track_id)
    joints = rng.normal(size=(55, 3)).astype(np.float32)
    return SimpleNamespace(
        track_id=track_id,
        score=0.75,
        head_world=joints[15].copy(),
        joints_world=joints,
        pelvis_rotation_world=random_rotation(rng).astype(np.float32),
        betas=rng.normal(size=10).astype(np.float32),
        expression=rng.normal(size=10).astype(np.float32),
        full_pose_world=rng.normal(size=(55, 3)).astype(np.float32),
        transl_world=rng.normal(size=3).astype(np.float32),
        vertices_world=rng.normal(size=(10475, 3)).astype(np.float32) if with_vertices else None,
    )


def test_human_message_fills_every_field_with_ros_body_axes():
    person = fake_person(with_vertices=True)
    msg = conversions.human_msg(person, with_vertices=True)
    assert msg.track_id == 3 and math.isclose(msg.score, 0.75)
    joints = np.array([[p.x, p.y, p.z] for p in msg.joints])
    np.testing.assert_allclose(joints, person.joints_world, atol=1e-6)
    np.testing.assert_allclose([msg.pelvis.position.x, msg.pelvis.position.y, msg.pelvis.position.z],
                               person.joints_world[0], atol=1e-6)
    np.testing.assert_allclose([msg.head.x, msg.head.y, msg.head.z], person.joints_world[15], atol=1e-6)
    o = msg.pelvis.orientation
    rot = matrix_from_quaternion(o.x, o.y, o.z, o.w)
    smplx_axes = person.pelvis_rotation_world.astype(np.float64)
    # ROS body x (forward) = SMPL-X z, y (left) = SMPL-X x, z (up) = SMPL-X y.
    np.testing.assert_allclose(rot[:, 0], smplx_axes[:, 2], atol=1e-6)
    np.testing.assert_allclose(rot[:, 1], smplx_axes[:, 0], atol=1e-6)
    np.testing.assert_allclose(rot[:, 2], smplx_axes[:, 1], atol=1e-6)
    np.testing.assert_allclose(msg.betas, person.betas)
    np.testing.assert_allclose(msg.expression, person.expression)
    np.testing.assert_allclose(msg.full_pose, person.full_pose_world.reshape(-1))
    np.testing.assert_allclose(msg.transl, person.transl_world)
    assert len(msg.vertices) == 10475
    assert math.isclose(msg.vertices[5].y, float(person.vertices_world[5, 1]), rel_tol=1e-6)
    assert conversions.human_msg(person, with_vertices=False).vertices == []


def test_a_cameras_humans_name_it_as_the_source_of_each_person_seen():
    people = [fake_person(3), fake_person(8)]
    result = SimpleNamespace(cam_to_world=np.eye(4), reset=False, people=people)
    tracks = [TrackInfo(3, TRACKED, 0.0, 1.0, np.zeros(3), np.zeros(3), 0.1, people[0]),
              TrackInfo(8, LOST, 0.0, 0.5, np.zeros(3), np.zeros(3), 0.1, people[1])]
    humans = conversions.humans_msg(result, Header(frame_id="odom"), "cam", False, tracks, 1.0, camera_name="front")
    assert humans.camera_name == "front"
    assert [(list(h.source_cameras), list(h.source_track_ids)) for h in humans.humans] == [(["front"], [3]), ([], [])]
    # A one-camera node: its camera has no name, every person it sees is a new track.
    humans = conversions.humans_msg(result, Header(frame_id="world"), "cam", False)
    assert humans.camera_name == ""
    assert [(list(h.source_cameras), list(h.source_track_ids)) for h in humans.humans] == [([""], [3]), ([""], [8])]


def test_fused_humans_carry_the_fused_id_the_best_view_and_the_sources():
    best, hidden = fake_person(3), fake_person(8)
    velocity = np.array([1.2, -0.3, 0.0])
    seen = FusedTrack(TrackInfo(12, TRACKED, 1.0, 2.0, best.joints_world[0], velocity, 0.1, best),
                      (("front", 3), ("rear", 9)))
    ended = FusedTrack(TrackInfo(4, ENDED, 0.0, 0.5, hidden.joints_world[0], velocity, 0.1, hidden), ())
    humans = conversions.fused_humans_msg(Header(frame_id="odom"), [seen, ended], False, now=2.5)
    assert (humans.header.frame_id, humans.camera_name, humans.camera_frame_id, humans.reset) == ("odom", "", "", False)
    assert math.isnan(humans.camera_pose.position.x)
    first, last = humans.humans
    assert (first.track_id, first.track_state, list(first.source_cameras), list(first.source_track_ids)) == (
        12, TRACKED, ["front", "rear"], [3, 9])
    assert (first.time_since_first_seen, first.time_since_last_seen) == (1.5, 0.5)
    np.testing.assert_allclose([first.velocity.x, first.velocity.y, first.velocity.z], velocity)
    np.testing.assert_allclose([first.head.x, first.head.y, first.head.z], best.head_world, atol=1e-6)
    assert (last.track_id, last.track_state, list(last.source_cameras)) == (4, ENDED, [])


@pytest.mark.parametrize("tf_mode", ["world_to_camera", "camera_to_world"])
def test_body_frames_compose_with_the_camera_tf_to_the_pelvis_pose(tf_mode):
    result = SimpleNamespace(cam_to_world=rigid(random_rotation(), [0.5, 1.0, -0.2]), reset=False,
                             people=[fake_person(3), fake_person(8)])
    stamp = stamp_of(2.25)
    camera = conversions.camera_transform(result.cam_to_world, "world", "cam", tf_mode, stamp)
    world_from_cam = transform_matrix(camera.transform)
    if tf_mode == "camera_to_world":
        world_from_cam = np.linalg.inv(world_from_cam)
    humans = conversions.humans_msg(result, Header(frame_id="world"), "cam", with_vertices=False)
    bodies = conversions.body_transforms(result, "cam", "body_", stamp)
    assert [(t.header.frame_id, t.child_frame_id) for t in bodies] == [("cam", "body_3"), ("cam", "body_8")]
    assert all(t.header.stamp == stamp for t in bodies)
    for body, human in zip(bodies, humans.humans):
        composed = world_from_cam @ transform_matrix(body.transform)
        o, p = human.pelvis.orientation, human.pelvis.position
        np.testing.assert_allclose(composed[:3, 3], [p.x, p.y, p.z], atol=1e-6)
        np.testing.assert_allclose(composed[:3, :3], matrix_from_quaternion(o.x, o.y, o.z, o.w), atol=1e-6)
    assert conversions.body_transforms(SimpleNamespace(cam_to_world=np.eye(4), people=[]), "cam", "b", stamp) == []


def test_cloud_layout_packing_and_density():
    points = RNG.normal(size=(100, 3)).astype(np.float32)
    colors = RNG.integers(0, 256, (100, 3), dtype=np.uint8)
    msg = conversions.cloud_msg(points, colors, Header(frame_id="world"))
    xyz, rgb, offsets = decode_cloud(msg)
    assert offsets == {"x": (0, PointField.FLOAT32, 1), "y": (4, PointField.FLOAT32, 1),
                       "z": (8, PointField.FLOAT32, 1), "rgb": (12, PointField.FLOAT32, 1)}
    assert msg.point_step == 16 and not msg.is_bigendian and msg.is_dense
    np.testing.assert_array_equal(xyz, points)
    np.testing.assert_array_equal(rgb, colors)
    points[3, 1] = np.nan
    assert not conversions.cloud_msg(points, colors, Header()).is_dense


def test_depth_and_camera_info():
    points = RNG.normal(size=(4, 6, 3)).astype(np.float32)
    depth = conversions.depth_msg(points, Header(frame_id="cam"))
    assert (depth.encoding, depth.height, depth.width, depth.step) == ("32FC1", 4, 6, 24)
    np.testing.assert_array_equal(np.frombuffer(bytes(depth.data), "<f4").reshape(4, 6), points[..., 2])
    K = np.array([[100.0, 0, 3], [0, 100.0, 2], [0, 0, 1]])
    info = conversions.camera_info_msg(K, (4, 6), Header(frame_id="cam"))
    assert (info.height, info.width) == (4, 6)
    np.testing.assert_array_equal(np.reshape(info.k, (3, 3)), K)
    np.testing.assert_array_equal(np.reshape(info.p, (3, 4))[:, :3], K)
    assert camera_info_problem(info, max_pixels=24) == ""
    assert "K is invalid" in camera_info_problem(CameraInfo(width=6, height=4), max_pixels=24)


def _valid_info(frame_id: str = "cam", **fields):
    """A calibrated 640 x 480 camera_info, with ``fields`` replaced."""
    values = dict(width=640, height=480, k=[500.0, 0, 320, 0, 500.0, 240, 0, 0, 1], d=[0.1, -0.2, 0, 0, 0.01])
    info = CameraInfo(**(values | fields))
    info.header.frame_id = frame_id
    return info


@pytest.mark.parametrize("fields, image, reason", [
    (dict(width=0), {}, "not positive"),
    (dict(height=0), {}, "not positive"),
    (dict(width=2**31 - 1, height=2**31 - 1), {}, "exceeds max_image_pixels"),
    (dict(), dict(image_size=(320, 240)), "differs from the images' 320 x 240"),
    (dict(d=[0.1, 0.2, 0.3]), {}, "D has 3 coefficients"),
    (dict(d=[0.1, float("nan"), 0, 0, 0]), {}, "D is not finite"),
    (dict(d=[0.0] * 8 + [float("inf")] * 6), {}, "D is not finite"),
    (dict(r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, float("nan")]), {}, "R is not finite"),
    (dict(p=[500.0, 0, 320, 0, 0, float("inf"), 240, 0, 0, 0, 1, 0]), {}, "P is not finite"),
    (dict(frame_id="/cam"), {}, "frame_id '/cam' starts with '/'"),
    (dict(frame_id="my cam"), {}, "contains whitespace"),
    (dict(), dict(image_frame="other_cam"), "frame_id 'cam' differs from the images' 'other_cam'"),
])
def test_camera_info_is_checked_whole(fields, image, reason):
    """Each defect alone, in an info that is otherwise valid for the same images."""
    images = dict(image_size=(640, 480), image_frame="cam")
    assert camera_info_problem(_valid_info(), 640 * 480, **images) == ""
    assert reason in camera_info_problem(_valid_info(**fields), 640 * 480, **(images | image))


def test_camera_info_without_distortion_or_frame_id_is_usable():
    assert camera_info_problem(_valid_info(d=[], frame_id=""), 640 * 480, (640, 480), "cam") == ""


# ------------------------------------------------------------------ markers

def test_markers_follow_tracks_and_reset():
    markers = TrackMarkers()
    header = Header(frame_id="world", stamp=stamp_of(1.0))
    first = markers.update(header, [fake_person(1), fake_person(2)], lifetime=0.75).markers
    assert first[0].action == Marker.DELETEALL  # a fresh display on start
    adds = first[1:]
    assert {(m.ns, m.id, m.type) for m in adds} == {
        (ns, t, k) for t in (1, 2) for ns, k in ((BONES_NS, Marker.LINE_LIST), (JOINTS_NS, Marker.SPHERE_LIST))
    }
    assert all((m.lifetime.sec, m.lifetime.nanosec) == (0, 750_000_000) for m in adds)
    bones = next(m for m in adds if m.ns == BONES_NS and m.id == 1)
    assert len(bones.points) == 2 * len(BONES) == 2 * 54
    assert all(m.header.stamp == header.stamp and m.header.frame_id == "world" for m in first)
    colour = bones.color

    second = markers.update(header, [fake_person(2), fake_person(5)]).markers
    deleted = {(m.ns, m.id) for m in second if m.action == Marker.DELETE}
    assert deleted == {(BONES_NS, 1), (JOINTS_NS, 1)}  # no mesh was ever added for track 1
    assert {m.id for m in second if m.action == Marker.ADD} == {2, 5}
    again = markers.update(header, [fake_person(1)]).markers
    assert next(m for m in again if m.ns == BONES_NS and m.id == 1).color == colour  # stable colour

    markers.reset()
    after_reset = markers.update(header, [fake_person(7)]).markers
    assert after_reset[0].action == Marker.DELETEALL
    assert not any(m.action == Marker.DELETE for m in after_reset)


def test_markers_use_bounded_namespaces_and_delete_only_what_was_added():
    markers, header = TrackMarkers(), Header(frame_id="world")
    faces = np.array([[0, 1, 2]])
    seen = set()
    for track_id in range(199):  # a new person every frame, as in a busy scene
        with_mesh = track_id % 3 == 0
        people = [fake_person(track_id, with_vertices=with_mesh)]
        array = markers.update(header, people, faces if with_mesh else None, 0.5, 2.5).markers
        seen |= {m.ns for m in array if m.action != Marker.DELETEALL}
        deletes = {(m.ns, m.id) for m in array if m.action == Marker.DELETE}
        if track_id:
            previous = track_id - 1
            expected = {(BONES_NS, previous), (JOINTS_NS, previous)} | (
                {(MESH_NS, previous)} if previous % 3 == 0 else set())
            assert deletes == expected
        assert markers.shown == 2 + with_mesh
    assert seen <= set(NAMESPACES)
    mesh = next(m for m in array if m.ns == MESH_NS and m.action == Marker.ADD)
    assert (mesh.lifetime.sec, mesh.lifetime.nanosec) == (2, 500_000_000)


def test_mesh_marker_is_a_triangle_list():
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    markers = TrackMarkers().update(Header(), [fake_person(4, with_vertices=True)], faces=faces).markers
    mesh = next(m for m in markers if m.ns == MESH_NS)
    assert mesh.type == Marker.TRIANGLE_LIST and len(mesh.points) == 6


# ------------------------------------------------------------------ map

def test_voxel_map_keeps_newest_point_per_voxel_and_is_bounded():
    vmap = VoxelMap(voxel_size=1.0, max_points=3)
    assert vmap.merge()  # an empty map is published once
    assert not vmap.merge()
    red, blue = np.array([[255, 0, 0]], np.uint8), np.array([[0, 0, 255]], np.uint8)
    vmap.add(np.array([[0.2, 0.2, 0.2]], np.float32), red)
    vmap.add(np.array([[0.7, 0.7, 0.7]], np.float32), blue)  # same voxel, newer
    assert vmap.merge()
    np.testing.assert_array_equal(vmap.colors, blue)
    vmap.add(np.array([[1.5, 0, 0], [2.5, 0, 0], [3.5, 0, 0]], np.float32), np.repeat(red, 3, 0))
    vmap.merge()
    assert len(vmap.points) == 3 and 0.7 not in vmap.points[:, 0]  # oldest voxel evicted
    vmap.clear()
    assert vmap.merge() and len(vmap.points) == 0


# ------------------------------------------------------------------ worker

def test_worker_keeps_only_the_newest_frame_and_applies_resets_in_order():
    events, started, release = [], threading.Event(), threading.Event()

    def process_round(items):
        (item,) = items.values()
        if item == 0:
            started.set()
            release.wait(5.0)  # the first frame is "slow"
        events.append(item)

    worker = InferenceWorker(process_round, lambda key: events.append(("reset", key)), lambda e: events.append(e))
    worker.start()
    try:
        assert not worker.submit(0)
        assert started.wait(5.0)
        drops = [worker.submit(i) for i in (1, 2, 3)]
        assert drops == [False, True, True]  # 1 and 2 were replaced while waiting
        worker.request_reset()
        release.set()
        assert wait_until(lambda: len(events) >= 3, 5.0)
        assert events == [0, ("reset", None), 3]
    finally:
        worker.stop()


def test_worker_serves_every_waiting_camera_in_each_round():
    """A camera publishing ten times as fast never starves the other: each round takes the
    newest frame of every camera that has one."""
    rounds, started, release = [], threading.Event(), threading.Event()

    def process_round(items):
        rounds.append(dict(items))
        started.set()
        release.wait(5.0)

    worker = InferenceWorker(process_round, lambda key: rounds.append(("reset", key)), lambda e: None)
    worker.start()
    try:
        worker.submit(0, "front")
        assert started.wait(5.0)  # round 1 is busy with front's first frame
        drops = [worker.submit(i, "front") for i in range(1, 11)]
        assert worker.submit("r0", "rear") is False
        worker.request_reset("rear")
        assert drops == [False] + [True] * 9
        release.set()
        assert wait_until(lambda: len(rounds) >= 3, 5.0)
        assert rounds == [{"front": 0}, ("reset", "rear"), {"front": 10, "rear": "r0"}]
    finally:
        worker.stop()


def test_worker_survives_a_failing_round():
    errors, failed, done = [], threading.Event(), threading.Event()

    def process_round(items):
        if "bad" in items.values():
            raise ValueError("boom")
        done.set()

    def on_error(error):
        errors.append(error)
        failed.set()

    worker = InferenceWorker(process_round, lambda key: None, on_error)
    worker.start()
    try:
        worker.submit("bad")
        assert failed.wait(5.0)
        worker.submit("good")
        assert done.wait(5.0)
        assert [str(e) for e in errors] == ["boom"]
    finally:
        worker.stop()


# ------------------------------------------------------------------ parameters

def test_params_file_lists_every_parameter_with_its_default():
    params = yaml.safe_load((REPO / "config" / "human3r.yaml").read_text())
    assert list(params) == ["/**/human3r_node"]
    in_file = params["/**/human3r_node"]["ros__parameters"]
    documented = parameters.documented_defaults()
    assert set(in_file) == set(documented)
    for name, (default, description) in documented.items():
        value = tuple(in_file[name]) if isinstance(default, tuple) else in_file[name]  # YAML has no tuples
        assert value == default and type(value) is type(default), name
        assert description


def test_params_file_applies_to_the_node_in_any_namespace(tmp_path):
    """rcl itself reads the shipped file (its key is a wildcard on the node name), so a
    namespaced launch still gets the file's values."""
    import rclpy

    from h3r_ros.ros.node import Human3RNode

    params = yaml.safe_load((REPO / "config" / "human3r.yaml").read_text())
    params["/**/human3r_node"]["ros__parameters"]["world_frame"] = "odom_from_file"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(params_file), "-r", "__ns:=/robot"])
    try:
        node = Human3RNode(context=context)
        assert node.get_fully_qualified_name() == "/robot/human3r_node"
        assert node.get_parameter("world_frame").value == "odom_from_file"
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


# ------------------------------------------------------------------ engine loading

def test_checkpoint_search_prefers_the_released_names(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert find_checkpoint([first, second]) is None
    for name in ("human3r_672S.pth", "human3r_896L.safetensors", "human3r_896L.pth"):
        (second / name).write_bytes(b"")
    assert find_checkpoint([first, second]) == second / "human3r_896L.pth"
    (first / "human3r_custom.safetensors").write_bytes(b"")
    assert find_checkpoint([first, second]) == first / "human3r_custom.safetensors"  # earlier folder wins


def test_device_names_are_checked():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(LoadError, match="not supported|not a torch device"):
        resolve_device("tpu")


def test_cpu_threads_set_the_intra_op_threads_and_zero_restores_the_default():
    default = torch.get_num_threads()
    params = tiny_assets().parameters()
    try:
        loaded = load_engine(settings_for(dict(params, cpu_threads=1)))
        assert torch.get_num_threads() == 1 and "CPU threads 1" in loaded.description
        load_engine(settings_for(dict(params, cpu_threads=0)))
        assert torch.get_num_threads() == default
    finally:
        torch.set_num_threads(default)


def test_compile_compiles_for_the_configured_frame_size_at_configure(monkeypatch):
    graphs = []
    compile_stages = Human3R.compile_fixed_shape_stages

    def counting_backend(graph, _example_inputs):  # inductor would take minutes here
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(Human3R, "compile_fixed_shape_stages",
                        lambda model: compile_stages(model, backend=counting_backend))
    assets = tiny_assets()
    height, width = assets.frames[0].shape[:2]
    try:
        loaded = load_engine(settings_for(assets.parameters(
            compile=True, compile_image_width=width, compile_image_height=height)))
        assert len(graphs) == 3  # before any frame arrives
        assert f"compiled for {width}x{height}" in loaded.description
        result = loaded.engine.step(assets.frames[1])
        assert result.index == 0 and result.reset and len(graphs) == 3
    finally:
        torch._dynamo.reset()


def test_a_failing_compile_fails_configure_with_how_to_run_without_it(monkeypatch):
    compile_stages = Human3R.compile_fixed_shape_stages

    def no_compiler(_graph, _example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(Human3R, "compile_fixed_shape_stages",
                        lambda model: compile_stages(model, backend=no_compiler))
    try:
        expected = r"(?s)compile failed for 640x480 frames.*no C\+\+ compiler.*set compile to false"
        with pytest.raises(LoadError, match=expected):
            load_engine(settings_for(tiny_assets().parameters(compile=True)))
    finally:
        torch._dynamo.reset()


def test_the_parameter_table_stays_light_and_in_step_with_the_engine():
    """The launch file imports the table: it must not pull torch or OpenCV in, and the dtype
    choices it declares must be the ones the engine accepts."""
    import subprocess
    import sys

    from h3r_ros.engine.precision import DTYPE_CHOICES

    assert parameters.SPECS["dtype"].choices == DTYPE_CHOICES
    code = "import sys, h3r_ros.ros.parameters; print(sorted({'torch', 'cv2', 'smplx'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_integer_parameters_with_only_a_lower_bound_get_a_range():
    descriptor = parameters._descriptor("n", parameters.Spec("count", min_value=0), 5)
    (bound,) = descriptor.integer_range
    assert (bound.from_value, bound.to_value, bound.step) == (0, 2**31 - 1, 1)
    (step,) = parameters._descriptor("input_size", parameters.SPECS["input_size"], 512).integer_range
    assert step.step == 16



# ------------------------------------------------------------------ diagnostics

def test_diagnostics_levels_and_values():
    def status(stats, idle_reason=""):
        (out,) = diagnostics_msg(stamp_of(1.0), "n: inference", "cpu", stats.take_window(), {"model": "m"},
                                 idle_reason).status
        return out.level, out.message, {kv.key: kv.value for kv in out.values}

    stats = NodeStats()
    assert status(stats)[:2] == (DiagnosticStatus.WARN, "no images received yet")
    assert status(stats, "inactive: not processing")[0] == DiagnosticStatus.OK
    for counter in (RECEIVED, RECEIVED, RECEIVED, DROPPED):
        stats.count(counter)
    stats.processed(0.25, {"model": 0.2, "total": 0.3}, people=2)
    level, message, values = status(stats)
    assert level == DiagnosticStatus.OK and "processing" in message
    assert values["dropped frames (total)"] == "1" and values["received messages (total)"] == "3"
    assert values["time model (ms)"] == "200.0" and values["stamp age at publication, last (ms)"] == "250.0"
    assert values["people in last frame"] == "2" and values["model"] == "m"
    stats.count(BAD)
    assert status(stats)[0] == DiagnosticStatus.WARN
    stats.error("ValueError: boom")
    level, message, _ = status(stats)
    assert level == DiagnosticStatus.ERROR and "boom" in message


def test_node_status_reports_the_state_snapshot():
    def status(state):
        (out,) = node_status(stamp_of(1.0), "n: inference", state, NodeStats().take_window()).status
        return out.level, out.message, {kv.key: kv.value for kv in out.values}

    sizes = {"map points": 7}
    level, message, values = status(NodeState("unconfigured", True, "configure failed: no checkpoint", sizes))
    assert level == DiagnosticStatus.ERROR and message == "configure failed: no checkpoint"
    assert values["map points"] == "7" and values["model"] == "not loaded"
    level, message, values = status(NodeState("active", False, "", sizes, model="m", focal_estimated=200.0))
    assert (level, message) == (DiagnosticStatus.OK, "disabled through ~/enable")
    assert values["estimated focal (px, model input)"] == "200.0" and values["last error"] == "none"
    assert status(NodeState("active", True, "frame failed: x", sizes))[0] == DiagnosticStatus.WARN  # no input yet
