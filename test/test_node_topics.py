"""End to end through topics and services: one configured node (tiny random model) per module.

Each test talks to the node only through DDS (images and camera_info in; humans, TF, clouds,
markers, path, depth, camera info and diagnostics out; services; parameters), except where
it wraps the engine's ``step`` to observe what the node asked it to compute or how long it
took. A second engine with the same weights gives the expected values.
"""

import math
import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from nav_msgs.msg import Path
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import (
    reference_selection,
    RosHarness,
    decode_cloud,
    image_msg,
    matrix_from_quaternion,
    rigid,
    settings_for,
    stamp_key,
    stamp_of,
    tiny_assets,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import SetBool, Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from h3r_ros.engine.preprocess import crop_geometry
from h3r_ros.engine.track_motion import MAX_SPEED, POSITION_STD
from h3r_ros.msg import Human, HumanArray
from h3r_ros.ros import conversions
from h3r_ros.ros.engine_loader import load_engine
from h3r_ros.ros.node import Human3RNode

CAMERA = "camera_optical"
STEP_TIMEOUT = 120.0  # s; generous: the CPU is shared with other test processes
TOL = dict(rtol=1e-4, atol=1e-4)
FOCAL = "camera_info focal (px, model input)"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Rig:
    """The node under test, the probe's publishers and one collector per output."""

    def __init__(self, **overrides):
        self.assets = tiny_assets()
        # Tracks outlive any pause of the shared CPU here; the track lifecycle test shortens it.
        self.params = self.assets.parameters(**({"track_timeout": 60.0} | overrides))
        self.ros = RosHarness()
        overrides = [Parameter(k, value=v) for k, v in self.params.items()]
        self.node = self.ros.add_node(Human3RNode(context=self.ros.context, parameter_overrides=overrides))
        probe = self.ros.probe
        self.image_pub = probe.create_publisher(Image, "image", 10)
        self.compressed_pub = probe.create_publisher(CompressedImage, "image/compressed", 10)
        self.info_pub = probe.create_publisher(CameraInfo, "camera_info", 10)
        self.out = {
            "humans": self.ros.collect(HumanArray, "humans"),
            "tf": self.ros.collect(TFMessage, "/tf", 100),
            "cloud": self.ros.collect(PointCloud2, "cloud"),
            "map": self.ros.collect(PointCloud2, "map_cloud", LATCHED),
            "markers": self.ros.collect(MarkerArray, "markers"),
            "path": self.ros.collect(Path, "camera_path"),
            "depth": self.ros.collect(Image, "depth/image"),
            "depth_info": self.ros.collect(CameraInfo, "depth/camera_info"),
            "info": self.ros.collect(CameraInfo, "estimated_camera_info"),
            "diagnostics": self.ros.collect(DiagnosticArray, "/diagnostics"),
        }
        self.lifecycle(Transition.TRANSITION_CONFIGURE)
        self.lifecycle(Transition.TRANSITION_ACTIVATE)
        self.wait_matched()

    def lifecycle(self, transition: int) -> None:
        response = self.ros.call(ChangeState, "/human3r_node/change_state",
                                 ChangeState.Request(transition=Transition(id=transition)), timeout=60.0)
        assert response.success, f"transition {transition} failed"

    def state(self) -> int:
        return self.ros.call(GetState, "/human3r_node/get_state", GetState.Request()).current_state.id

    def wait_matched(self, publisher=None) -> None:
        publisher = publisher or self.image_pub
        assert wait_until(lambda: publisher.get_subscription_count() > 0
                          and all(c.matched() for c in self.out.values()), 30.0)

    def next_stamp(self):
        """Now on the probe's clock: increasing, and comparable with the node's clock."""
        return self.ros.probe.get_clock().now().to_msg()

    def send(self, msg, wait: bool = True):
        """Publish an image (raw or compressed); return the HumanArray with its stamp."""
        publisher = self.compressed_pub if isinstance(msg, CompressedImage) else self.image_pub
        publisher.publish(msg)
        return self.out["humans"].wait_stamp(msg.header.stamp, STEP_TIMEOUT) if wait else None

    def send_frame(self, index: int, **kwargs):
        stamp = kwargs.pop("stamp", None) or self.next_stamp()
        return self.send(image_msg(self.assets.frames[index], stamp, CAMERA, **kwargs))

    def call(self, srv_type, name, request):
        return self.ros.call(srv_type, f"/human3r_node/{name}", request)

    def set_params(self, **values) -> None:
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        results = self.ros.call(SetParameters, "/human3r_node/set_parameters", request).results
        assert all(r.successful for r in results), [r.reason for r in results]

    def reset(self) -> None:
        assert self.call(Trigger, "reset", Trigger.Request()).success

    def diagnostics(self) -> dict[str, str]:
        """Key-values (plus level, message, hardware_id) of the next /diagnostics message."""
        since = stamp_key(self.next_stamp())
        msgs = self.out["diagnostics"].wait_for(lambda ms: any(stamp_key(m.header.stamp) >= since for m in ms), 10.0)
        (status,) = next(m for m in msgs if stamp_key(m.header.stamp) >= since).status
        return {"level": status.level, "message": status.message, "hardware_id": status.hardware_id,
                **{kv.key: kv.value for kv in status.values}}

    def counter(self, key: str) -> int:
        return int(self.diagnostics()[key])

    def wrap_engine_step(self, min_seconds: float = 0.0, images: list | None = None):
        """Record (duration, engine config) of every step the node runs, and its frame in
        ``images`` when given; each step takes at least ``min_seconds`` (a slow engine on any CPU)."""
        engine = self.node._loaded.engine
        original = engine.step
        calls = []

        def step(rgb, stamp):
            if images is not None:
                images.append(rgb)
            start = time.monotonic()
            result = original(rgb, stamp)
            time.sleep(max(0.0, start + min_seconds - time.monotonic()))
            calls.append((time.monotonic() - start, engine.config))
            return result

        engine.step = step
        return calls, lambda: vars(engine).pop("step")

    def close(self):
        self.ros.close()


@pytest.fixture(scope="module")
def rig():
    rig = Rig()
    yield rig
    rig.close()


def by_stamp(messages, stamp, key=lambda m: m.header.stamp):
    return [m for m in messages if stamp_key(key(m)) == stamp_key(stamp)]


def marker_stamp(array_msg):
    """An empty array (a frame with nothing to add or delete) matches no image stamp."""
    return array_msg.markers[0].header.stamp if array_msg.markers else stamp_of(0.0)


def tf_with_stamp(rig, stamp, timeout: float = 10.0):
    def matching(msgs):
        return [t for m in msgs for t in by_stamp(m.transforms, stamp)]

    return matching(rig.out["tf"].wait_for(lambda msgs: bool(matching(msgs)), timeout))


def pose_matrix(pose) -> np.ndarray:
    o, p = pose.orientation, pose.position
    return rigid(matrix_from_quaternion(o.x, o.y, o.z, o.w), [p.x, p.y, p.z])


def transform_matrix(transform) -> np.ndarray:
    r, t = transform.rotation, transform.translation
    return rigid(matrix_from_quaternion(r.x, r.y, r.z, r.w), [t.x, t.y, t.z])


def test_outputs_match_a_second_engine_on_the_same_frames(rig):
    reference = load_engine(settings_for(rig.params)).engine
    rig.reset()
    encodings = [dict(encoding="rgb8"), dict(encoding="bgr8", pad=12), dict(encoding="bgra8"),
                 dict(encoding="rgba8", pad=4)]
    id_offset = None
    previous_ids: set[int] = set()
    for i, encoding in enumerate(encodings):
        stamp = rig.next_stamp()
        humans = rig.send_frame(i, stamp=stamp, **encoding)
        expected = reference.step(rig.assets.frames[i], stamp)

        # humans: stamp, frames, reset flag, camera pose and every person field
        assert humans.header.frame_id == "world" and humans.camera_frame_id == CAMERA
        assert humans.reset == (i == 0)
        np.testing.assert_allclose(pose_matrix(humans.camera_pose), expected.cam_to_world, **TOL)
        seen = [h for h in humans.humans if h.track_state in (Human.TRACK_NEW, Human.TRACK_TRACKED)]
        lost = [h for h in humans.humans if h.track_state == Human.TRACK_LOST]
        assert humans.humans == seen + lost
        ids = [h.track_id for h in seen]
        expected_ids = [p.track_id for p in expected.people]
        assert len(ids) == len(expected_ids)
        if ids and id_offset is None:
            id_offset = ids[0] - expected_ids[0]  # ids may continue across the reset
        assert ids == [t + (id_offset or 0) for t in expected_ids]
        assert {h.track_id for h in lost} == previous_ids - set(ids)
        for msg, person in zip(seen, expected.people):
            assert math.isclose(msg.score, person.score, rel_tol=1e-4)
            joints = np.array([[p.x, p.y, p.z] for p in msg.joints])
            np.testing.assert_allclose(joints, person.joints_world, **TOL)
            pelvis = pose_matrix(msg.pelvis)
            np.testing.assert_allclose(pelvis[:3, 3], person.joints_world[0], **TOL)
            np.testing.assert_allclose(
                pelvis[:3, :3], person.pelvis_rotation_world @ conversions.ROS_FROM_SMPLX_BODY, atol=1e-4)
            np.testing.assert_allclose([msg.head.x, msg.head.y, msg.head.z], person.joints_world[15], **TOL)
            np.testing.assert_allclose(msg.betas, person.betas, **TOL)
            np.testing.assert_allclose(msg.expression, person.expression, **TOL)
            np.testing.assert_allclose(np.reshape(msg.full_pose, (55, 3)), person.full_pose_world, **TOL)
            np.testing.assert_allclose(msg.transl, person.transl_world, **TOL)
            assert len(msg.vertices) == 0

        # TF: world -> camera optical frame = the camera pose
        (tf,) = tf_with_stamp(rig, stamp)
        assert (tf.header.frame_id, tf.child_frame_id) == ("world", CAMERA)
        np.testing.assert_allclose(transform_matrix(tf.transform), expected.cam_to_world, **TOL)

        # cloud: the engine's world points after threshold, stride and cap
        cloud = rig.out["cloud"].wait_stamp(stamp)
        assert cloud.header.frame_id == "world" and cloud.is_dense
        xyz, rgb, _ = decode_cloud(cloud)
        p = rig.params
        points, colors = reference_selection(
            expected.points_world, expected.conf, expected.rgb, p["cloud_conf_threshold"], 2, max_points=50000)
        assert 0 < xyz.shape[0] < expected.conf[::2, ::2].size and xyz.shape == points.shape
        np.testing.assert_allclose(xyz, points, **TOL)
        np.testing.assert_array_equal(rgb, colors)

        # depth camera pair: model-input resolution, the roi of the resized source frame
        depth = rig.out["depth"].wait_stamp(stamp)
        assert depth.header.frame_id == CAMERA and (depth.height, depth.width) == expected.input_size
        np.testing.assert_allclose(np.frombuffer(bytes(depth.data), "<f4").reshape(expected.input_size),
                                   expected.points_cam[..., 2], **TOL)
        depth_info = rig.out["depth_info"].wait_stamp(stamp)
        left, top, right, bottom = expected.crop_box
        assert (depth_info.width, depth_info.height) == expected.resized_size
        assert (depth_info.roi.x_offset, depth_info.roi.y_offset, depth_info.roi.width, depth_info.roi.height) == (
            left, top, depth.width, depth.height)
        k = np.reshape(depth_info.k, (3, 3)) - [[0, 0, left], [0, 0, top], [0, 0, 0]]  # the roi's intrinsics
        np.testing.assert_allclose(k, expected.K, **TOL)
        # estimated intrinsics: the source image's resolution
        info = rig.out["info"].wait_stamp(stamp)
        source_hw = rig.assets.frames[i].shape[:2]
        assert info.header.frame_id == CAMERA and (info.height, info.width) == source_hw
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), conversions.intrinsics_in_source(
            k + [[0, 0, left], [0, 0, top], [0, 0, 0]], expected.resized_size, source_hw[::-1]), **TOL)

        # path: one pose per frame since the reset
        path = rig.out["path"].wait_stamp(stamp)
        assert path.header.frame_id == "world" and len(path.poses) == i + 1
        assert stamp_key(path.poses[-1].header.stamp) == stamp_key(stamp)
        np.testing.assert_allclose(pose_matrix(path.poses[-1].pose), expected.cam_to_world, **TOL)

        # markers: fixed namespaces, track ids as marker ids, a lifetime, lost tracks not deleted
        # (they end in the lifecycle test), DELETEALL after the reset
        markers = rig.out["markers"].wait_stamp(stamp, key=marker_stamp).markers
        assert (markers[0].action == Marker.DELETEALL) == (i == 0)
        assert {(m.ns, m.id) for m in markers if m.action == Marker.ADD} == {
            (ns, t) for t in ids for ns in ("human_bones", "human_joints")}
        assert not [m for m in markers if m.action == Marker.DELETE]
        assert all(0.5 <= m.lifetime.sec + 1e-9 * m.lifetime.nanosec <= 30.0 for m in markers if m.action == Marker.ADD)
        assert all(m.header.frame_id == "world" and stamp_key(m.header.stamp) == stamp_key(stamp) for m in markers)
        previous_ids = set(ids) | {h.track_id for h in lost}

        # map: accumulated in the world frame, stamped with the newest frame in it
        latest_map = rig.out["map"].wait_stamp(stamp)
        assert latest_map.header.frame_id == "world" and latest_map.width > 0
    assert id_offset is not None, "the calibrated tiny model should detect people"


def test_inverted_and_disabled_tf(rig):
    rig.set_params(tf_mode="camera_to_world")
    try:
        humans = rig.send_frame(0)
        (tf,) = tf_with_stamp(rig, humans.header.stamp)
        assert (tf.header.frame_id, tf.child_frame_id) == (CAMERA, "world")
        np.testing.assert_allclose(transform_matrix(tf.transform), np.linalg.inv(pose_matrix(humans.camera_pose)),
                                   atol=1e-6)
        rig.set_params(tf_mode="none")
        stamp = rig.send_frame(1).header.stamp
        time.sleep(0.5)  # TF goes out before humans; leave a stray one time to arrive
        assert not [t for m in rig.out["tf"].messages for t in by_stamp(m.transforms, stamp)]
    finally:
        rig.set_params(tf_mode="world_to_camera")


def test_camera_frame_parameter_overrides_the_header(rig):
    rig.set_params(camera_frame="head_camera_optical")
    try:
        humans = rig.send_frame(2)
        assert humans.camera_frame_id == "head_camera_optical"
        (tf,) = tf_with_stamp(rig, humans.header.stamp)
        assert tf.child_frame_id == "head_camera_optical"
        assert rig.out["depth"].wait_stamp(humans.header.stamp).header.frame_id == "head_camera_optical"
    finally:
        rig.set_params(camera_frame="")


def test_body_frames_for_exactly_the_people_of_the_frame(rig):
    """REP-155 frames below the camera, in the camera TF's message or alone (tf_mode none)."""
    try:
        for tf_mode, prefix in (("world_to_camera", "body_"), ("none", "person_")):
            rig.set_params(publish_body_tf=True, tf_mode=tf_mode, body_frame_prefix=prefix)
            humans = next((h for h in map(rig.send_frame, range(4)) if h.humans), None)
            assert humans is not None, "the calibrated tiny model should detect people"
            stamp = humans.header.stamp
            tf_with_stamp(rig, stamp)
            (message,) = [m for m in rig.out["tf"].messages if by_stamp(m.transforms, stamp)]  # one per frame
            transforms = message.transforms
            seen = [h for h in humans.humans if h.track_state != Human.TRACK_LOST]  # lost: no frame
            names = {f"{prefix}{h.track_id}": h for h in seen}
            camera = [CAMERA] if tf_mode == "world_to_camera" else []
            assert sorted(t.child_frame_id for t in transforms) == sorted([*names, *camera])
            world_from_camera = pose_matrix(humans.camera_pose)
            for body in (t for t in transforms if t.child_frame_id in names):
                assert body.header.frame_id == CAMERA
                np.testing.assert_allclose(world_from_camera @ transform_matrix(body.transform),
                                           pose_matrix(names[body.child_frame_id].pelvis), **TOL)
    finally:
        rig.set_params(publish_body_tf=False, tf_mode="world_to_camera", body_frame_prefix="body_")


def test_reset_service_clears_state_tracks_path_markers_and_map(rig):
    rig.send_frame(0)
    rig.send_frame(1)
    rig.reset()
    humans = rig.send_frame(2)
    stamp = humans.header.stamp
    assert humans.reset
    assert len(rig.out["path"].wait_stamp(stamp).poses) == 1
    assert rig.out["markers"].wait_stamp(stamp, key=marker_stamp).markers[0].action == Marker.DELETEALL
    one_frame = rig.out["map"].wait_stamp(stamp).width
    assert 0 < one_frame <= rig.out["cloud"].wait_stamp(stamp).width  # only this frame's voxels
    assert not rig.send_frame(3).reset


def test_the_world_origin_is_exactly_the_first_camera_after_a_reset(rig):
    """The world is the first camera's frame with ROS axes: its pose there is the axis change
    alone, in the humans, the path and the world -> camera TF."""
    ros_from_optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    rig.reset()
    humans = rig.send_frame(1)
    assert humans.reset
    for pose in (humans.camera_pose, rig.out["path"].wait_stamp(humans.header.stamp).poses[0].pose):
        np.testing.assert_allclose(pose_matrix(pose)[:3, 3], 0.0, atol=1e-6)
        np.testing.assert_allclose(pose_matrix(pose)[:3, :3], ros_from_optical, atol=1e-6)
    (camera,) = [t for t in tf_with_stamp(rig, humans.header.stamp) if t.child_frame_id == CAMERA]
    np.testing.assert_allclose(transform_matrix(camera.transform)[:3, 3], 0.0, atol=1e-6)
    later = rig.send_frame(2)
    assert np.linalg.norm(pose_matrix(later.camera_pose)[:3, 3]) > 1e-4  # the camera moved from there


def test_enable_service_pauses_and_resumes_processing(rig):
    """A frame received while disabled is neither processed nor queued: once the node counts
    it as received, re-enabling and sending the next frame runs the engine once, for that
    frame, and drops nothing (a queued frame would have run first, or been replaced)."""
    received, dropped = "received messages (total)", "dropped frames (total)"
    before = rig.diagnostics()
    calls, restore = rig.wrap_engine_step()
    response = rig.call(SetBool, "enable", SetBool.Request(data=False))
    assert response.success and "disabled" in response.message
    try:
        stamp = rig.next_stamp()
        rig.send(image_msg(rig.assets.frames[0], stamp, CAMERA), wait=False)
        assert wait_until(lambda: int(rig.diagnostics()[received]) > int(before[received]), STEP_TIMEOUT)
        assert rig.diagnostics()["enabled"] == "false"
    finally:
        assert rig.call(SetBool, "enable", SetBool.Request(data=True)).success
    try:
        assert rig.send_frame(1) is not None
        assert len(calls) == 1
    finally:
        restore()
    assert rig.diagnostics()[dropped] == before[dropped]
    assert not by_stamp(rig.out["humans"].messages, stamp)


def test_stamp_jumping_backwards_resets_once(rig):
    now = rig.next_stamp()
    assert not rig.send_frame(0, stamp=now).reset
    earlier = stamp_of(now.sec - 100.0)  # a bag looping back
    assert rig.send_frame(1, stamp=earlier).reset
    assert not rig.send_frame(2, stamp=stamp_of(now.sec - 99.0)).reset
    assert not rig.send_frame(3).reset


def test_bad_messages_are_dropped_and_counted(rig):
    bad_before = rig.counter("bad messages (total)")
    frame = rig.assets.frames[0]
    unknown = image_msg(frame, rig.next_stamp(), CAMERA)
    unknown.encoding = "nv12"
    short = image_msg(frame, rig.next_stamp(), CAMERA)
    short.data = short.data[:-10]
    empty = image_msg(frame, rig.next_stamp(), CAMERA)
    empty.width = empty.height = empty.step = 0
    empty.data = []
    for msg in (unknown, short, empty):
        rig.send(msg, wait=False)
        time.sleep(0.05)
    assert rig.send_frame(1) is not None  # still processing
    assert not any(by_stamp(rig.out["humans"].messages, m.header.stamp) for m in (unknown, short, empty))
    assert wait_until(lambda: rig.counter("bad messages (total)") == bad_before + 3, 10.0)


def test_diagnostics_report_rates_drops_latency_stages_and_model_state(rig):
    rig.send_frame(0)
    values = rig.diagnostics()
    for key in ("input rate (Hz)", "processed rate (Hz)", "dropped frames (total)", "received messages (total)",
                "stamp age at publication, last (ms)", "lifecycle state", "model", "enabled", "failed frames (total)"):
        assert key in values
    assert values["lifecycle state"] == "active" and values["hardware_id"] == "cpu"
    assert "human3r_tiny.pth" in values["model"]
    assert values["precision"].startswith("float32 (requested float32")

    for _ in range(3):  # the window may close before the frame is counted: look at the next one
        rig.send_frame(1)
        stages = {k for k in rig.diagnostics() if k.startswith("time ")}
        if stages:
            break
    assert {"time model (ms)", "time total (ms)", "time publish (ms)"} <= stages


def camera_info(width: int = 320, height: int = 180) -> CameraInfo:
    """A valid camera_info for the test frames (320 x 180) unless resized."""
    info = CameraInfo(width=width, height=height, k=[400.0, 0.0, 160.0, 0.0, 400.0, 90.0, 0.0, 0.0, 1.0])
    info.header.frame_id = CAMERA
    return info


def diagnostics_after(rig, info: CameraInfo, settled) -> dict[str, str]:
    """What /diagnostics reports after ``info``. Delivery races the frames, so publish and step
    again until ``settled(values)`` or five tries."""
    assert wait_until(lambda: rig.info_pub.get_subscription_count() > 0, 10.0)
    for index in range(5):
        rig.info_pub.publish(info)
        rig.send_frame(index % 2)
        values = rig.diagnostics()
        if settled(values):
            break
    return values


def focal_after(rig, info: CameraInfo, settled) -> float:
    """The camera_info focal the node reports after ``info``."""
    return float(diagnostics_after(rig, info, lambda values: settled(float(values[FOCAL])))[FOCAL])


def test_camera_info_focal_is_reported_in_model_input_pixels(rig):
    focal = focal_after(rig, camera_info(), lambda f: not math.isnan(f))
    assert math.isclose(focal, 400.0 * 160 / 320, rel_tol=1e-6)  # the model input is 160 px wide


def distorted_camera_info() -> CameraInfo:
    """The test frames' camera_info with strong barrel distortion; P left zero (K is used)."""
    info = camera_info()
    info.distortion_model, info.d = "plumb_bob", [-0.35, 0.12, 0.0, 0.0, 0.0]
    return info


def test_distorted_images_are_rectified_before_the_model(rig):
    """The engine gets OpenCV's undistortion of each frame; /diagnostics reports it, its cost and
    the processed and model-input sizes; ``rectify`` false passes frames as they are."""
    images = []
    calls, restore = rig.wrap_engine_step(images=images)
    info = distorted_camera_info()
    try:
        values = diagnostics_after(rig, info, lambda v: v["rectification"].startswith("rectifying"))
        assert values["rectification"] == "rectifying (plumb_bob, 5 coefficients)"
        frame = rig.assets.frames[1]
        rig.send_frame(1)
        expected = cv2.undistort(frame, np.reshape(info.k, (3, 3)), np.asarray(info.d))
        assert np.abs(images[-1].astype(int) - expected).max() <= 1
        assert np.abs(frame.astype(int) - expected).mean() > 2.0  # the distortion matters
        # Stage times are per diagnostics window: the next one may hold no frame.
        values = diagnostics_after(rig, info, lambda v: "time rectify (ms)" in v)
        assert float(values["time rectify (ms)"]) > 0.0 and float(values["rectification map build (ms)"]) > 0.0
        input_h, input_w = crop_geometry(320, 180, rig.params["input_size"]).input_size
        assert values["processed image (px)"] == "320 x 180"
        assert values["model input (px)"] == f"{input_w} x {input_h}"

        rig.set_params(rectify=False)
        rig.send_frame(1)
        assert images[-1] is not frame and np.array_equal(images[-1], frame)
        assert rig.diagnostics()["rectification"].startswith("off (rectify false)")
    finally:
        restore()
        rig.set_params(rectify=True)
    values = diagnostics_after(rig, camera_info(), lambda v: v["rectification"].startswith("not needed"))
    assert values["rectification"] == "not needed (no distortion)"


def test_vertices_and_meshes_on_request(rig):
    rig.set_params(publish_vertices=True, publish_mesh=True, mesh_publish_period=0.0)
    try:
        humans = rig.send_frame(0)
        seen = [h for h in humans.humans if h.track_state != Human.TRACK_LOST]
        assert seen and all(len(h.vertices) == 10475 for h in seen)
        assert all(len(h.vertices) == 0 for h in humans.humans if h.track_state == Human.TRACK_LOST)
        markers = rig.out["markers"].wait_stamp(humans.header.stamp, key=marker_stamp).markers
        meshes = [m for m in markers if m.type == Marker.TRIANGLE_LIST]
        assert len(meshes) == len(seen)
        assert len(meshes[0].points) == 3 * rig.node._loaded.faces.shape[0]
    finally:
        rig.set_params(publish_vertices=False, publish_mesh=False, mesh_publish_period=1.0)


def test_outputs_without_subscribers_are_not_computed(rig):
    calls, restore = rig.wrap_engine_step()
    outputs = rig.node.cameras[0].outputs
    muted = {"cloud": (PointCloud2, "cloud", "cloud"), "depth": (Image, "depth/image", "depth"),
             "depth_info": (CameraInfo, "depth/camera_info", "depth_info"),
             "info": (CameraInfo, "estimated_camera_info", "camera_info"),
             "humans": (HumanArray, "humans", "humans")}
    try:
        rig.set_params(publish_map=False, publish_vertices=True)
        for name in ("cloud", "depth", "depth_info", "info"):
            rig.ros.probe.destroy_subscription(rig.out[name].subscription)
        assert wait_until(lambda: all(outputs.subscription_count(muted[n][2]) == 0
                                      for n in ("cloud", "depth", "depth_info", "info")))
        rig.send_frame(0)
        assert not calls[-1][1].with_points and calls[-1][1].with_vertices  # humans are still subscribed

        rig.ros.probe.destroy_subscription(rig.out["humans"].subscription)
        assert wait_until(lambda: outputs.subscription_count("humans") == 0)
        stamp = rig.next_stamp()
        rig.send(image_msg(rig.assets.frames[1], stamp, CAMERA), wait=False)
        rig.out["markers"].wait_stamp(stamp, STEP_TIMEOUT, key=marker_stamp)
        assert not calls[-1][1].with_vertices
    finally:
        restore()
        rig.set_params(publish_map=True, publish_vertices=False)
        for name, (msg_type, topic, _) in muted.items():
            rig.out[name] = rig.ros.collect(msg_type, topic)
        rig.wait_matched()


def test_fast_camera_and_slow_engine_keep_latency_bounded_and_count_drops(rig):
    calls, restore = rig.wrap_engine_step(min_seconds=0.15)  # <= 7 Hz against a 50 Hz camera
    humans = rig.out["humans"]
    humans.clear()
    before = rig.diagnostics()
    sent = []
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # about 50 Hz, far above the model's rate
            stamp = rig.next_stamp()
            rig.send(image_msg(rig.assets.frames[len(sent) % 8], stamp, CAMERA), wait=False)
            sent.append(stamp)
            time.sleep(0.02)
        humans.wait_stamp(sent[-1], STEP_TIMEOUT)  # the newest frame is never dropped
    finally:
        restore()
    after = rig.diagnostics()
    step_max = max(duration for duration, _ in calls)
    latencies = [(arrival - stamp_key(m.header.stamp)) * 1e-9 for m, arrival in humans.arrivals()]
    processed = len(latencies)
    assert 1 < processed < len(sent) / 3
    # At most one frame's wait for the slot plus its own inference, plus publication slack.
    assert max(latencies) < 2 * step_max + 0.5, (max(latencies), step_max)

    def delta(key):
        return int(after[key]) - int(before[key])

    received = delta("received messages (total)")
    assert received >= len(sent) // 2  # the camera-side QoS (depth 1) may lose some itself
    assert delta("dropped frames (total)") >= received - processed - 1 > 0


def test_frames_older_than_max_image_age_are_skipped(rig):
    rig.set_params(max_image_age=0.5)
    try:
        stale_before = rig.counter("stale frames skipped (total)")
        old = stamp_of(rig.next_stamp().sec - 10.0)
        rig.send(image_msg(rig.assets.frames[0], old, CAMERA), wait=False)
        assert wait_until(lambda: rig.counter("stale frames skipped (total)") == stale_before + 1, STEP_TIMEOUT)
        assert not by_stamp(rig.out["humans"].messages, old)
        assert rig.send_frame(1) is not None
    finally:
        rig.set_params(max_image_age=0.0)


def test_track_lifecycle_velocity_and_end_through_the_node(rig):
    """NEW with its velocity unknown, then TRACKED with the filter's two-point velocity, LOST with its last body while
    unseen, ENDED once after track_timeout (markers deleted), then a returning person is new."""
    engine = rig.node._loaded.engine
    original = engine.step
    hide = {"people": False}

    def step(rgb, stamp):
        result = original(rgb, stamp)
        if hide["people"]:
            result.people = []  # everyone out of view
        return result

    timeout = 0.5
    rig.set_params(track_timeout=timeout)
    rig.reset()
    t0 = stamp_key(rig.next_stamp()) * 1e-9
    engine.step = step
    try:
        first = rig.send_frame(0, stamp=stamp_of(t0))
        new = [h for h in first.humans if h.track_state == Human.TRACK_NEW]
        # The reset ended every earlier track: reported here, once, after this image's people.
        assert new and all(h.track_state == Human.TRACK_ENDED for h in first.humans[len(new):])
        assert all(h.time_since_first_seen == 0 and math.isnan(h.velocity_std)
                   and np.isnan([h.velocity.x, h.velocity.y, h.velocity.z]).all() for h in new)  # unknown
        second = rig.send_frame(0, stamp=stamp_of(t0 + 0.2))
        assert all(h.track_state != Human.TRACK_ENDED for h in second.humans)
        before = {h.track_id: h for h in new}
        tracked = [h for h in second.humans if h.track_id in before]
        assert tracked and all(h.track_state == Human.TRACK_TRACKED for h in tracked)
        dt = (stamp_key(second.header.stamp) - stamp_key(first.header.stamp)) * 1e-9
        for h in tracked:
            old = before[h.track_id].pelvis.position
            step_ = np.array([h.pelvis.position.x - old.x, h.pelvis.position.y - old.y, h.pelvis.position.z - old.z])
            velocity = [h.velocity.x, h.velocity.y, h.velocity.z]
            if np.linalg.norm(step_ / dt) > MAX_SPEED:  # random weights move people implausibly
                assert np.isnan(velocity).all() and math.isnan(h.velocity_std)
            else:
                np.testing.assert_allclose(velocity, step_ / dt, rtol=1e-5)  # stamps as float s: ~2e-7 s near 1.8e9
                assert h.velocity_std == pytest.approx(math.sqrt(2) * POSITION_STD / dt, rel=1e-5)
            assert h.time_since_first_seen == pytest.approx(dt, abs=1e-6) and h.time_since_last_seen == 0
        alive = {h.track_id: h for h in second.humans}

        hide["people"] = True
        lost = rig.send_frame(0, stamp=stamp_of(t0 + 0.4))
        assert {h.track_id for h in lost.humans} == set(alive)
        for h in lost.humans:
            assert h.track_state == Human.TRACK_LOST
            assert h.time_since_last_seen == pytest.approx(0.2, abs=1e-6)  # stamps: ns of ~1.8e9 s
            assert h.pelvis == alive[h.track_id].pelvis
            np.testing.assert_array_equal(*[[m.velocity.x, m.velocity.y, m.velocity.z] for m in (h, alive[h.track_id])])
        ended = rig.send_frame(0, stamp=stamp_of(t0 + 0.2 + timeout + 0.05))
        assert {h.track_id for h in ended.humans} == set(alive)
        assert all(h.track_state == Human.TRACK_ENDED for h in ended.humans)
        markers = rig.out["markers"].wait_stamp(ended.header.stamp, key=marker_stamp).markers
        assert {(m.ns, m.id) for m in markers if m.action == Marker.DELETE} == {
            (ns, t) for t in alive for ns in ("human_bones", "human_joints")}
        assert rig.send_frame(0, stamp=stamp_of(t0 + 0.2 + timeout + 0.1)).humans == []  # reported once

        hide["people"] = False
        back = rig.send_frame(0, stamp=stamp_of(t0 + 0.2 + timeout + 0.2))
        assert back.humans and all(h.track_state == Human.TRACK_NEW for h in back.humans)
        assert min(h.track_id for h in back.humans) > max(alive)  # ended ids are not matched again
    finally:
        vars(engine).pop("step")
        rig.set_params(track_timeout=60.0)


def test_reconfigure_for_compressed_input_through_lifecycle_services(rig):
    """Last in the module: leaves the node on compressed input."""
    rig.lifecycle(Transition.TRANSITION_DEACTIVATE)
    assert rig.state() == State.PRIMARY_STATE_INACTIVE
    rig.lifecycle(Transition.TRANSITION_CLEANUP)
    assert rig.state() == State.PRIMARY_STATE_UNCONFIGURED and rig.node._loaded is None
    rig.set_params(compressed_input=True)
    rig.lifecycle(Transition.TRANSITION_CONFIGURE)
    rig.lifecycle(Transition.TRANSITION_ACTIVATE)
    assert rig.state() == State.PRIMARY_STATE_ACTIVE
    rig.wait_matched(rig.compressed_pub)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rig.assets.frames[0], cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
    msg.header.stamp, msg.header.frame_id = rig.next_stamp(), CAMERA
    humans = rig.send(msg)
    assert humans.reset and humans.camera_frame_id == CAMERA
    bad_before = rig.counter("bad messages (total)")
    garbage = CompressedImage(format="jpeg", data=b"\xff\xd8 not really a jpeg")
    garbage.header.stamp = rig.next_stamp()
    rig.send(garbage, wait=False)
    assert wait_until(lambda: rig.counter("bad messages (total)") == bad_before + 1, STEP_TIMEOUT)
