"""Bad-input corpus through real rclpy: a running node (tiny model) is sent every kind of
broken message on its input topics, each followed by a good frame that must still produce
output. Invalid images are dropped and counted; exceptions injected into callbacks are
logged with their traceback while the node keeps spinning.
"""

import math
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time as TimeMsg
from lifecycle_msgs.msg import Transition
from ros_helpers import image_msg, stamp_key, stamp_of, wait_until
from sensor_msgs.msg import CameraInfo, CompressedImage
from std_srvs.srv import Trigger
from test_node_topics import CAMERA, FOCAL, STEP_TIMEOUT, Rig, by_stamp, camera_info, focal_after

from h3r_ros.engine.preprocess import crop_geometry
from h3r_ros.msg import Human
from h3r_ros.ros.image_decoding import ImageDecodeError, decode_compressed

BAD = "bad messages (total)"
OUT_OF_ORDER = "out-of-order frames dropped (total)"
IGNORED_INFO = "camera_info messages ignored (total)"
FAILED = "failed frames (total)"


@pytest.fixture(scope="module")
def rig():
    rig = Rig()
    yield rig
    rig.close()


def assert_people_seen(humans) -> None:
    """The calibrated test frames all show people: a frame processed as usual has some, seen
    in it, at finite positions."""
    seen = [h for h in humans.humans if h.track_state in (Human.TRACK_NEW, Human.TRACK_TRACKED)]
    assert seen and all(math.isfinite(v) for h in seen for v in (h.head.x, h.head.y, h.head.z))


def good_frame_follows(rig, index=0):
    """A valid frame after the bad one gives its usual output (the node is alive and well)."""
    assert_people_seen(rig.send_frame(index))


def send_bad(rig, msg):
    rig.send(msg, wait=False)
    time.sleep(0.05)  # let it arrive before the good frame replaces it in the slot


def raw(rig, stamp=None, frame_id=CAMERA, **changes):
    msg = image_msg(rig.assets.frames[0], stamp or rig.next_stamp(), frame_id)
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


def _raw_cases(rig):
    frame = rig.assets.frames[0]
    h, w = frame.shape[:2]

    def sized(width, height):
        return image_msg(np.zeros((height, width, 3), np.uint8), rig.next_stamp(), CAMERA)

    return {
        "unknown encoding": raw(rig, encoding="nv21"),
        "16-bit depth encoding": raw(rig, encoding="16UC1"),
        "float depth encoding": raw(rig, encoding="32FC1"),
        "16-bit colour with an 8-bit step": raw(rig, encoding="rgb16"),
        "empty encoding": raw(rig, encoding=""),
        "step too small": raw(rig, step=w * 3 - 1),
        "step too large for the data": raw(rig, step=w * 3 + 7),
        "truncated data": raw(rig, data=bytes(w * 3 * h - 10)),
        "extra data": raw(rig, data=bytes(w * 3 * h + 3)),
        "zero size": raw(rig, width=0, height=0, step=0, data=b""),
        "1 row": sized(320, 1),
        "1 column": sized(1, 320),
        "too thin for the model": sized(3000, 10),
        "negative stamp": raw(rig, stamp=TimeMsg(sec=-1, nanosec=0)),
        "nanoseconds out of range": raw(rig, stamp=TimeMsg(sec=10, nanosec=1_000_000_000)),
        "nanoseconds far out of range": raw(rig, stamp=TimeMsg(sec=10, nanosec=4_000_000_000)),
        "blank frame id": raw(rig, frame_id=" "),
        "frame id with a leading slash": raw(rig, frame_id="/camera"),
        "frame id with whitespace": raw(rig, frame_id="cam era"),
        "frame id is the world frame": raw(rig, frame_id="world"),
    }


def test_bad_raw_images_are_dropped_counted_and_followed_by_output(rig):
    before = rig.counter(BAD)
    cases = _raw_cases(rig)
    for msg in cases.values():
        send_bad(rig, msg)
        good_frame_follows(rig)
    published = {stamp_key(m.header.stamp) for m in rig.out["humans"].messages}
    assert not [name for name, m in cases.items() if stamp_key(m.header.stamp) in published]
    assert wait_until(lambda: rig.counter(BAD) == before + len(cases), 10.0)
    assert rig.node.lifecycle_state == "active"


@pytest.mark.parametrize("width, height", [(1, 1), (2, 3), (17, 16), (160, 16), (16, 160), (1000, 1000)])
def test_tiny_and_odd_frames_that_the_model_can_take_produce_output(rig, width, height):
    """Upscaled like any small frame (the reference's bicubic resize): accepted and processed
    at the model-input size the preprocessing rule gives, with intrinsics for the source size."""
    rgb = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    stamp = rig.next_stamp()
    before = rig.counter(BAD)
    humans = rig.send(image_msg(rgb, stamp, CAMERA))
    assert humans.header.frame_id == "world" and humans.camera_frame_id == CAMERA
    geometry = crop_geometry(width, height, rig.params["input_size"])
    left, top, right, bottom = geometry.crop_box
    depth = rig.out["depth"].wait_stamp(stamp)
    assert (depth.width, depth.height) == (right - left, bottom - top)
    info = rig.out["info"].wait_stamp(stamp)
    assert (info.width, info.height) == (width, height)
    assert rig.counter(BAD) == before


def test_images_above_max_image_pixels_are_refused(rig):
    before = rig.counter(BAD)
    frame = rig.assets.frames[0]
    rig.set_params(max_image_pixels=frame.shape[0] * frame.shape[1] - 1)
    try:
        send_bad(rig, raw(rig))
    finally:
        rig.set_params(max_image_pixels=4096 * 4096)
    good_frame_follows(rig)
    assert wait_until(lambda: rig.counter(BAD) == before + 1, 10.0)


def _info(**fields) -> CameraInfo:
    """The valid camera_info of the test frames with ``fields`` replaced."""
    info = camera_info()
    for name, value in fields.items():
        setattr(info.header if name == "frame_id" else info, name, value)
    return info


VALID_K = camera_info().k


@pytest.mark.parametrize("fields", [
    dict(k=[float("nan")] * 9),
    dict(k=[0.0] * 9),
    dict(k=[float("inf"), *VALID_K[1:]]),
    dict(k=[-400.0, *VALID_K[1:]]),
    dict(width=0, height=2**31),
    dict(width=2**31 - 1, height=2**31 - 1),
    dict(width=640, height=360),
    dict(d=[0.0] * 1000),
    dict(d=[float("nan")] * 5),
    dict(frame_id=" "),
    dict(frame_id="another_camera"),
], ids=["k_nan", "k_zero", "k_inf", "k_negative", "size_zero", "size_huge", "size_of_other_images", "d_length",
        "d_nan", "frame_id_space", "frame_id_of_other_images"])
def test_bad_camera_info_is_counted_and_the_last_valid_one_stays(rig, fields):
    """Each defect alone, in an info otherwise valid for the images: dropped, counted, and the
    focal the node reports stays that of the last valid info."""
    focal = focal_after(rig, camera_info(), lambda f: not math.isnan(f))
    assert math.isclose(focal, 400.0 * 160 / 320, rel_tol=1e-6)
    before = rig.counter(IGNORED_INFO)
    rig.info_pub.publish(_info(**fields))
    assert wait_until(lambda: rig.counter(IGNORED_INFO) == before + 1, 10.0)
    good_frame_follows(rig)
    assert float(rig.diagnostics()[FOCAL]) == focal


def test_small_backwards_jitter_is_dropped_and_a_large_jump_resets_once(rig):
    before = rig.counter(OUT_OF_ORDER)
    now = rig.next_stamp()
    assert not rig.send_frame(0, stamp=now).reset
    jitter = stamp_of(stamp_key(now) * 1e-9 - 0.2)  # within stamp_jump_threshold (1 s)
    rig.send(image_msg(rig.assets.frames[1], jitter, CAMERA), wait=False)
    time.sleep(0.1)
    one_ns = TimeMsg(sec=now.sec, nanosec=now.nanosec - 1) if now.nanosec else TimeMsg(sec=now.sec - 1, nanosec=999_999_999)
    rig.send(image_msg(rig.assets.frames[1], one_ns, CAMERA), wait=False)
    time.sleep(0.1)
    after = rig.send_frame(2)
    assert not after.reset  # no reset for jitter
    assert not [m for m in rig.out["humans"].messages if stamp_key(m.header.stamp) in
                (stamp_key(jitter), stamp_key(one_ns))]
    assert wait_until(lambda: rig.counter(OUT_OF_ORDER) == before + 2, 10.0)
    loop = stamp_of(stamp_key(after.header.stamp) * 1e-9 - 30.0)  # a bag looping back
    assert rig.send_frame(3, stamp=loop).reset
    assert not rig.send_frame(0, stamp=stamp_of(stamp_key(loop) * 1e-9 + 0.1)).reset


def test_exceptions_escaping_callbacks_are_logged_and_the_node_keeps_spinning(rig, capfd):
    node = rig.node
    camera = node.cameras[0]
    original = camera.check

    def explode(*_):
        raise KeyError("injected failure in the image callback")

    camera.check = explode  # raises inside the subscription callback
    try:
        send_bad(rig, raw(rig))
        assert wait_until(lambda: "injected failure in the image callback" in node._last_error, 10.0)
    finally:
        camera.check = original
    good_frame_follows(rig)

    def broken_sizes():
        raise ZeroDivisionError("injected failure in the diagnostics timer")

    node.bounded_sizes = broken_sizes  # the timer callback fails every period
    try:
        assert wait_until(lambda: "injected failure in the diagnostics timer" in node._last_error, 10.0)
    finally:
        del node.bounded_sizes
    good_frame_follows(rig, 1)

    worker = node._worker

    def broken_reset(camera=None):
        raise RuntimeError("injected failure in a service")

    worker.request_reset = broken_reset
    try:
        response = rig.call(Trigger, "reset", Trigger.Request())
    finally:
        del worker.request_reset
    assert not response.success and "injected failure in a service" in response.message
    good_frame_follows(rig, 2)

    engine = node._loaded.engine
    failed_before = rig.counter("failed frames (total)")

    def broken_step(*_):
        raise FloatingPointError("injected failure in a frame")

    engine.step = broken_step  # raises on the inference thread
    try:
        stamp = rig.next_stamp()
        rig.send(image_msg(rig.assets.frames[0], stamp, CAMERA), wait=False)
        assert wait_until(lambda: rig.counter("failed frames (total)") == failed_before + 1, 10.0)
    finally:
        del engine.step
    values = rig.diagnostics()
    assert "FloatingPointError: injected failure in a frame" in values["last error"]
    assert not by_stamp(rig.out["humans"].messages, stamp)
    good_frame_follows(rig, 3)

    err = capfd.readouterr().err
    for text in ("the image callback", "the diagnostics timer", "a service", "a frame"):
        assert f"injected failure in {text}" in err
    assert err.count("Traceback (most recent call last)") >= 4
    assert "in broken_step" in err  # the frame's traceback, down to where it raised


def frame_published_after(rig, info: CameraInfo, expected: bool) -> bool:
    """Whether a frame sent after ``info`` is published (True) or dropped (False). Delivery races
    the frame, so ``info`` is sent again until the outcome is ``expected``, 5 tries at most."""
    for _ in range(5):
        rig.info_pub.publish(info)
        time.sleep(0.1)
        dropped = rig.counter(BAD)
        stamp = rig.next_stamp()
        rig.send(image_msg(rig.assets.frames[0], stamp, CAMERA), wait=False)
        assert wait_until(lambda: by_stamp(rig.out["humans"].messages, stamp) or rig.counter(BAD) > dropped, 60.0)
        published = bool(by_stamp(rig.out["humans"].messages, stamp))
        if published == expected:
            break
    return published


def test_a_camera_info_that_cannot_rectify_drops_its_frames_and_the_node_goes_on(rig, capfd):
    """Finite but absurd coefficients pass the camera_info checks; their maps are degenerate:
    each frame is dropped as bad input (counted, warned), until a usable camera_info arrives."""
    before, failed = rig.counter(BAD), rig.counter(FAILED)
    assert not frame_published_after(rig, _info(distortion_model="plumb_bob", d=[1e6, 1e6, 0.0, 0.0, 1e6]), False)
    values = rig.diagnostics()
    assert int(values[BAD]) >= before + 1 and int(values[FAILED]) == failed
    assert rig.node.lifecycle_state == "active"
    assert values["rectification"].startswith("failed: degenerate calibration")
    err = capfd.readouterr().err
    assert "Traceback" not in err  # bad input, not a failure of the node (the warning is rate-limited)
    assert frame_published_after(rig, camera_info(), True)
    assert rig.diagnostics()["rectification"] == "not needed (no distortion)"


NON_FINITE = "frames with non-finite outputs dropped (total)"


def _poison_camera(result):
    result.cam_to_world[0, 3] = math.nan


def _poison_points(result):
    for selection in result.selections.values():
        selection.points[0, 2] = math.inf


def _poison_people(result):
    result.people[0].betas[3] = math.nan


@pytest.mark.parametrize("stage, poison, new_world", [
    ("camera pose", _poison_camera, True),
    ("points", _poison_points, False),
    ("people", _poison_people, False),
])
def test_a_frame_with_non_finite_outputs_publishes_nothing_and_the_next_goes_out(rig, stage, poison, new_world):
    """A NaN or Inf (a bf16 overflow) never reaches /tf, a planner or RViz; a world whose camera
    pose went non-finite starts again."""
    engine = rig.node._loaded.engine
    original = engine.step

    def step(rgb, stamp):
        result = original(rgb, stamp)
        poison(result)
        return result

    before = rig.counter(NON_FINITE)
    bad = rig.next_stamp()
    engine.step = step
    try:
        rig.send(image_msg(rig.assets.frames[0], bad, CAMERA), wait=False)
        assert wait_until(lambda: rig.counter(NON_FINITE) == before + 1, STEP_TIMEOUT)
    finally:
        del engine.step
    values = rig.diagnostics()
    assert values["last non-finite output"] == stage
    humans = rig.send_frame(1)  # the next frame goes out as usual
    assert_people_seen(humans)
    assert humans.reset is new_world
    for name in ("humans", "tf", "cloud", "path", "markers"):
        assert not [m for m in rig.out[name].messages if _stamps(m) & {stamp_key(bad)}], name
    tf_now = [m for m in rig.out["tf"].messages if _stamps(m) & {stamp_key(humans.header.stamp)}]
    assert tf_now and all(np.isfinite([t.transform.translation.x, t.transform.rotation.w]).all()
                          for m in tf_now for t in m.transforms)


def _stamps(msg) -> set[int]:
    if hasattr(msg, "transforms"):
        return {stamp_key(t.header.stamp) for t in msg.transforms}
    if hasattr(msg, "markers"):
        return {stamp_key(m.header.stamp) for m in msg.markers}
    return {stamp_key(msg.header.stamp)}


# --- compressed input --------------------------------------------------------------------


def _png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side zeros: a few hundred KB that decode to side^2 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), bytes(side + 1), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int, frame) -> bytes:
    """A real jpeg whose frame header (SOF0) is rewritten to declare another size."""
    data = bytearray(cv2.imencode(".jpg", frame)[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def compressed(rig, data, fmt="jpeg", stamp=None, frame_id=CAMERA):
    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp = stamp or rig.next_stamp()
    msg.header.frame_id = frame_id
    return msg


@pytest.fixture(scope="module")
def compressed_rig(rig):
    """The same node, reconfigured for image/compressed (a configure-time parameter)."""
    rig.lifecycle(Transition.TRANSITION_DEACTIVATE)
    rig.lifecycle(Transition.TRANSITION_CLEANUP)
    rig.set_params(compressed_input=True)
    rig.lifecycle(Transition.TRANSITION_CONFIGURE)
    rig.lifecycle(Transition.TRANSITION_ACTIVATE)
    rig.wait_matched(rig.compressed_pub)
    yield rig


def good_compressed_follows(rig, index=0):
    frame = rig.assets.frames[index]
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert_people_seen(rig.send(compressed(rig, jpeg)))


def test_bad_compressed_images_are_dropped_counted_and_followed_by_output(compressed_rig):
    rig = compressed_rig
    frame = rig.assets.frames[0]
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    webp_ok, webp = cv2.imencode(".webp", frame)
    before = rig.counter(BAD)
    cases = {
        "garbage": compressed(rig, bytes(range(256)) * 4),
        "empty": compressed(rig, b""),
        "tiff format": compressed(rig, jpeg, "tiff"),
        "compressed depth": compressed(rig, jpeg, "16UC1; compressedDepth"),
        "png bomb (10000 x 10000)": compressed(rig, _png_bomb(10_000), "png"),
        "jpeg declaring 20000 x 20000": compressed(rig, _jpeg_declaring(20_000, 20_000, frame)),
        "jpeg declaring 0 x 0": compressed(rig, _jpeg_declaring(0, 0, frame)),
        "header only": compressed(rig, jpeg[:20]),
        "negative stamp": compressed(rig, jpeg, stamp=TimeMsg(sec=-3)),
        "bad frame id": compressed(rig, jpeg, frame_id="/camera"),
        "too thin": compressed(rig, cv2.imencode(".png", np.zeros((1, 500, 3), np.uint8))[1].tobytes(), "png"),
    }
    if webp_ok:
        cases["webp data"] = compressed(rig, webp.tobytes())
    for name, msg in cases.items():
        send_bad(rig, msg)
        good_compressed_follows(rig)
    published = {stamp_key(m.header.stamp) for m in rig.out["humans"].messages}
    assert not [name for name, m in cases.items() if stamp_key(m.header.stamp) in published]
    assert wait_until(lambda: rig.counter(BAD) == before + len(cases), 10.0)


def test_truncated_jpeg_is_handled_as_its_decoder_says(compressed_rig):
    """OpenCV decodes a jpeg cut in half into a partly grey image (libjpeg warns, and pads the
    missing rows): the node processes exactly what its decoder returns, or drops and counts
    the message where the decoder refuses it."""
    rig = compressed_rig
    jpeg = cv2.imencode(".jpg", rig.assets.frames[0])[1].tobytes()
    msg = compressed(rig, jpeg[: len(jpeg) // 2])
    try:
        decoded = decode_compressed(msg) is not None
    except ImageDecodeError:
        decoded = False
    before = rig.counter(BAD)
    if decoded:
        humans = rig.send(msg)
        assert humans.header.frame_id == "world"
        assert rig.out["info"].wait_stamp(msg.header.stamp).width == rig.assets.frames[0].shape[1]
    else:
        send_bad(rig, msg)
        assert wait_until(lambda: rig.counter(BAD) == before + 1, 10.0)
    good_compressed_follows(rig, 1)
    assert rig.counter(BAD) == before + (0 if decoded else 1)
