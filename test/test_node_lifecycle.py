"""Lifecycle of the node: configure failures leave it unconfigured with a clear error, the
transitions load and free the model, and the executable stops cleanly on SIGINT / SIGTERM."""

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import RosHarness, image_msg, stamp_key, stamp_of, tiny_assets, wait_until
from sensor_msgs.msg import Image, PointCloud2
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from h3r_ros.msg import Human, HumanArray
from h3r_ros.ros import node as node_module
from h3r_ros.ros import parameters
from h3r_ros.ros.node import Human3RNode

REPO = Path(__file__).resolve().parent.parent
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
CAMERA = "camera_optical"  # image_msg's default frame_id


@pytest.fixture(scope="module")
def ros():
    harness = RosHarness()
    yield harness
    harness.close()


@pytest.fixture
def make_node(ros):
    created = []

    def make(**params):
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        node = ros.add_node(Human3RNode(context=ros.context, parameter_overrides=overrides))
        created.append(node)
        return node

    yield make
    for node in created:
        if node.lifecycle_state != "finalized":
            node.trigger_shutdown()
        ros.remove_node(node)


def test_configure_fails_cleanly_on_missing_or_bad_files(make_node, tmp_path, capfd):
    assets = tiny_assets()
    corrupt = tmp_path / "human3r_corrupt.pth"
    corrupt.write_bytes(b"definitely not a checkpoint")
    bad_smplx = tmp_path / "bad_smplx" / "SMPLX_NEUTRAL.npz"
    bad_smplx.parent.mkdir()
    bad_smplx.write_bytes(b"not an npz either")
    cases = {
        "does not exist": dict(checkpoint=str(tmp_path / "missing.pth")),
        "cannot load checkpoint": dict(checkpoint=str(corrupt)),
        "is unreadable": dict(smplx_dir=str(bad_smplx.parent)),
        "world_frame: must not be empty": dict(world_frame=""),
    }
    if not torch.cuda.is_available():
        cases["CUDA is not available"] = dict(device="cuda:0")
    for message, change in cases.items():
        node = make_node(**(assets.parameters() | change))
        assert node.trigger_configure() == FAILURE, message
        assert node.lifecycle_state == "unconfigured"
        assert node._loaded is None and node.cameras[0].outputs is None
        assert message in capfd.readouterr().err  # rcutils logs to stderr


def test_without_smplx_the_node_publishes_people_without_bodies(make_node, ros, tmp_path, capfd):
    """No SMPL-X file: configure succeeds with a warning that says what is missing and where
    it goes; people keep id, score, head and SMPL-X pose/shape, flagged as bodiless; markers
    are heads only."""
    no_smplx = tmp_path / "empty_models"
    no_smplx.mkdir()
    node = make_node(**(tiny_assets().parameters() | dict(smplx_dir=str(no_smplx), publish_body_tf=True)))
    assert node.trigger_configure() == SUCCESS
    err = capfd.readouterr().err
    assert "people-without-bodies mode" in err and f"{no_smplx}/SMPLX_NEUTRAL.npz" in err
    assert node._loaded.faces is None and node._loaded.engine.body_model is None
    assert node.trigger_activate() == SUCCESS

    humans = ros.collect(HumanArray, "humans")
    markers = ros.collect(MarkerArray, "markers")
    tf = ros.collect(TFMessage, "/tf", 100)
    publisher = ros.probe.create_publisher(Image, "image", 1)
    try:
        assert wait_until(lambda: publisher.get_subscription_count() > 0 and humans.matched() and markers.matched(), 30)
        found = None
        for i, frame in enumerate(tiny_assets().frames[:4]):
            stamp = ros.probe.get_clock().now().to_msg()
            publisher.publish(image_msg(frame, stamp))
            found = humans.wait_stamp(stamp, 120.0)
            if found.humans:
                break
        assert found.humans, "the tiny model detects people in these frames"
        marker_msg = markers.wait_stamp(stamp, 10.0, key=lambda m: m.markers[-1].header.stamp)
        tf_msg = tf.wait_stamp(stamp, 10.0, key=lambda m: m.transforms[0].header.stamp)
    finally:
        ros.probe.destroy_publisher(publisher)
    for person in found.humans:
        assert person.has_body is False and len(person.joints) == 0 and len(person.vertices) == 0
        assert all(math.isfinite(v) for v in (person.head.x, person.head.y, person.head.z))
        assert math.isnan(person.pelvis.position.x) and math.isnan(person.pelvis.orientation.w)
        assert np.isnan(person.transl).all()
        assert np.isfinite(person.full_pose).all() and np.isfinite(person.betas).all()
    added = [m for m in marker_msg.markers if m.action == Marker.ADD]
    assert len(added) == len(found.humans)
    for marker, person in zip(added, found.humans):
        assert marker.type == Marker.SPHERE_LIST and len(marker.points) == 1
        assert (marker.points[0].x, marker.points[0].y, marker.points[0].z) == (person.head.x, person.head.y,
                                                                                 person.head.z)
    assert [t.child_frame_id for t in tf_msg.transforms] == [CAMERA], "no body frames without bodies"


def test_parameters_are_documented_and_validated(make_node):
    node = make_node(**tiny_assets().parameters())
    names = [name for name in node.list_parameters([], 0).names if name != "use_sim_time"]
    assert len(names) > 30
    assert all(d.description for d in node.describe_parameters(names))
    (result,) = node.set_parameters([Parameter("tf_mode", value="map_to_odom")])
    assert not result.successful
    (result,) = node.set_parameters([Parameter("dtype", value="float64")])
    assert not result.successful
    (result,) = node.set_parameters([Parameter("cloud_stride", value=0)])  # below the declared range
    assert not result.successful
    assert node.get_parameter("tf_mode").value == "world_to_camera"


def test_transitions_load_activate_and_release(make_node, ros):
    node = make_node(**tiny_assets().parameters())
    assert node.trigger_configure() == SUCCESS and node.lifecycle_state == "inactive"
    assert node._loaded is not None
    assert node.trigger_activate() == SUCCESS and node.lifecycle_state == "active"
    assert wait_until(lambda: ros.probe.count_subscribers("/image") == 1)
    assert node.trigger_deactivate() == SUCCESS and node.lifecycle_state == "inactive"
    assert wait_until(lambda: ros.probe.count_subscribers("/image") == 0)
    assert node.trigger_cleanup() == SUCCESS and node.lifecycle_state == "unconfigured"
    assert node._loaded is None
    assert node.trigger_shutdown() == SUCCESS and node.lifecycle_state == "finalized"


def test_cpu_threads_are_process_wide_while_configured_and_restored_by_cleanup(make_node):
    default = torch.get_num_threads()
    node = make_node(**tiny_assets().parameters(cpu_threads=1))
    assert node.trigger_configure() == SUCCESS
    assert torch.get_num_threads() == 1
    assert node.trigger_cleanup() == SUCCESS
    assert torch.get_num_threads() == default


# ------------------------------------------------------------------ stopping in the middle of a frame

SLOW_STEP = 3.0  # s each padded step takes: longer than the shutdown's wait (node.SHUTDOWN_TIMEOUT)


class SlowFrame:
    """Pads the node's engine step to SLOW_STEP s and says when one has started."""

    def __init__(self, node, pad_first: bool = False) -> None:
        """``pad_first``: the wait comes before the real step (whose writes to the engine state
        then come last), instead of after it."""
        self.started = threading.Event()
        self.ended = threading.Event()
        engine = node._loaded.engine
        original = engine.step

        def step(rgb, stamp):
            self.started.set()
            start = time.monotonic()
            if pad_first:
                time.sleep(SLOW_STEP)
            result = original(rgb, stamp)
            time.sleep(max(0.0, start + SLOW_STEP - time.monotonic()))
            self.ended.set()
            return result

        engine.step = step


def _start_slow_frame(node, ros, pad_first: bool = False):
    """An active node in the middle of a slow frame; returns (its stamp, the humans collector)."""
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    slow = SlowFrame(node, pad_first)
    humans = ros.collect(HumanArray, "humans")
    publisher = ros.probe.create_publisher(Image, "image", 1)
    assert wait_until(lambda: publisher.get_subscription_count() > 0 and humans.matched(), 30.0)
    stamp = ros.probe.get_clock().now().to_msg()
    deadline = time.monotonic() + 60.0
    while not slow.started.is_set() and time.monotonic() < deadline:  # resend until matched both ways
        publisher.publish(image_msg(tiny_assets().frames[0], stamp))
        slow.started.wait(1.0)
    assert slow.started.is_set()
    ros.probe.destroy_publisher(publisher)
    return slow, humans


def _log_order(err: str, *texts: str) -> None:
    positions = [err.find(text) for text in texts]
    assert -1 not in positions, [t for t, p in zip(texts, positions) if p < 0]
    assert positions == sorted(positions), texts


def test_shutdown_in_the_middle_of_a_slow_frame(make_node, ros, capfd):
    node = make_node(**tiny_assets().parameters())
    slow, humans = _start_slow_frame(node, ros)
    assert node.trigger_shutdown() == SUCCESS and node.lifecycle_state == "finalized"
    assert not slow.ended.is_set()  # the frame outlived the shutdown's wait
    published = len(humans.messages)
    assert slow.ended.wait(SLOW_STEP + 10.0) and node._straggler.wait(10.0)
    time.sleep(0.5)
    assert len(humans.messages) == published == 0  # nothing after (nor during) the shutdown
    err = capfd.readouterr().err
    _log_order(err, "a frame was still being processed after 2 s: it is cancelled", "outputs closed",
               "model released by the node: the cancelled frame frees it when it ends", "shut down")
    assert "Traceback" not in err and "failed" not in err and node._last_error == ""


def test_deactivate_waits_for_the_frame_and_cleanup_releases_after_it(make_node, ros, capfd):
    node = make_node(**tiny_assets().parameters())
    slow, humans = _start_slow_frame(node, ros)
    assert node.trigger_deactivate() == SUCCESS
    assert slow.ended.is_set()  # deactivate waited (STOP_TIMEOUT) for the frame, which published
    assert wait_until(lambda: len(humans.messages) == 1, 10.0)
    assert node.trigger_cleanup() == SUCCESS
    err = capfd.readouterr().err
    _log_order(err, "inference thread stopped", "outputs closed", "model released")
    assert "cancelled" not in err and "Traceback" not in err and node._last_error == ""


def test_cleanup_after_a_frame_outlived_deactivate(make_node, ros, capfd, monkeypatch):
    monkeypatch.setattr(node_module, "STOP_TIMEOUT", 0.5)
    node = make_node(**tiny_assets().parameters())
    slow, humans = _start_slow_frame(node, ros)
    assert node.trigger_deactivate() == SUCCESS and not slow.ended.is_set()
    assert node.trigger_cleanup() == SUCCESS and node.lifecycle_state == "unconfigured"
    assert slow.ended.wait(SLOW_STEP + 10.0) and node._straggler.wait(10.0)
    time.sleep(0.5)
    assert humans.messages == []  # the cancelled frame published nothing
    err = capfd.readouterr().err
    _log_order(err, "a frame was still being processed after 0.5 s: it is cancelled", "outputs closed",
               "model released by the node: the cancelled frame frees it when it ends")
    assert "Traceback" not in err and "failed" not in err and node._last_error == ""
    # The node configures and runs again, with nothing left of the camera it saw before.
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    known = node.cameras[0].input
    assert known.last_stamp is None and known.image_size is None and known.camera_info is None
    _process_one_frame(ros)


def test_a_reset_while_a_cancelled_frame_runs_is_applied_before_the_next_frame(make_node, ros, monkeypatch):
    monkeypatch.setattr(node_module, "STOP_TIMEOUT", 0.5)
    node = make_node(**tiny_assets().parameters())
    slow, _ = _start_slow_frame(node, ros, pad_first=True)
    assert node.trigger_deactivate() == SUCCESS and not slow.ended.is_set()
    # The cancelled frame has yet to write its step into the engine state.
    response = ros.call(Trigger, f"/{node.get_name()}/reset", Trigger.Request())
    assert response.success
    assert slow.ended.wait(SLOW_STEP + 10.0) and node._straggler.wait(10.0)
    assert node.trigger_activate() == SUCCESS
    humans = _process_one_frame(ros)
    assert humans.reset, "the first frame after the reset must start a new world"


def test_outputs_want_nothing_once_closed(make_node):
    node = make_node(**tiny_assets().parameters())
    assert node.trigger_configure() == SUCCESS
    outputs, settings = node.cameras[0].outputs, node._settings
    assert node.trigger_cleanup() == SUCCESS  # closes the outputs
    wanted = outputs.wanted(settings)  # a frame that outlived the cleanup asks this
    assert not any(vars(wanted).values())


def test_map_is_built_only_for_subscribers_and_a_late_joiner_gets_the_latest(make_node, ros):
    from h3r_ros.ros.outputs import LATCHED_QOS

    node = make_node(**tiny_assets().parameters())
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    voxel_map = node.cameras[0].outputs._map
    merges = []
    merge = voxel_map.merge
    voxel_map.merge = lambda: merges.append(time.monotonic()) or merge()
    humans = ros.collect(HumanArray, "humans")
    publisher = ros.probe.create_publisher(Image, "image", 1)
    assert wait_until(lambda: publisher.get_subscription_count() > 0 and humans.matched(), 30.0)

    def frame(k: int):
        stamp = stamp_of(1000.0 + k)
        publisher.publish(image_msg(tiny_assets().frames[k % 8], stamp))
        return humans.wait_stamp(stamp, 120.0)

    for k in range(3):
        frame(k)
    # Humans go out before the map's turn: wait until the frames are wholly published.
    assert wait_until(lambda: node.cameras[0].stats.take_window().totals["processed"] == 3, 30.0)
    assert voxel_map.size > 0 and merges == []  # accumulated, never merged nor sent
    joined = ros.collect(PointCloud2, "map_cloud", LATCHED_QOS)
    assert wait_until(joined.matched, 30.0)
    frame(3)
    latest = joined.wait_stamp(stamp_of(1003.0), 30.0)  # sent at once, not after map_publish_period
    assert merges and latest.width == voxel_map.points.shape[0] > 0
    # Transient local: one who joins later, with no new frame, gets that same map.
    later = ros.collect(PointCloud2, "map_cloud", LATCHED_QOS)
    assert later.wait_for(timeout=30.0)[-1].width == latest.width
    ros.probe.destroy_publisher(publisher)


# ------------------------------------------------------------------ executable


def _command(executable: list[str], name: str, params: dict) -> list[str]:
    """Command line with a node name of its own (a just-stopped node's graph entries linger)."""
    args = [*executable, "--ros-args", "-r", f"__node:={name}"]
    for key, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{key}:={text}"]
    return args


def _rendered_script(tmp_path: Path) -> Path:
    """scripts/human3r_node.in as CMake's configure_file would write it."""
    script = tmp_path / "human3r_node"
    script.write_text((REPO / "scripts" / "human3r_node.in").read_text().replace("@H3R_PYTHON@", sys.executable))
    script.chmod(0o755)
    return script


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # the loopback DDS settings are inherited
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _state(ros, name: str) -> int:
    response = ros.call(GetState, f"/{name}/get_state", GetState.Request(), timeout=60.0, resend_after=5.0)
    return response.current_state.id


def _stop(process: subprocess.Popen, sig: int) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=60.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _process_one_frame(ros):
    """Proves the inference thread runs (and is joined) when the signal arrives; returns the
    first HumanArray."""
    humans = ros.collect(HumanArray, "humans")
    publisher = ros.probe.create_publisher(Image, "image", 1)
    try:
        assert wait_until(lambda: publisher.get_subscription_count() > 0 and humans.matched(), 30.0)
        # Matching seen from the publisher's side does not mean the node has matched it yet:
        # resend until a frame comes through.
        deadline = time.monotonic() + 120.0
        while not humans.messages and time.monotonic() < deadline:
            publisher.publish(image_msg(tiny_assets().frames[0], ros.probe.get_clock().now().to_msg()))
            wait_until(lambda: bool(humans.messages), 2.0)
        assert humans.messages, "timed out on /humans"
        return humans.messages[0]
    finally:
        ros.probe.destroy_publisher(publisher)
        ros.probe.destroy_subscription(humans.subscription)


@pytest.mark.parametrize("entry, sig", [("module", signal.SIGINT), ("script", signal.SIGTERM)])
def test_executable_processes_and_stops_cleanly_on_signals(ros, tmp_path, entry, sig):
    name = f"human3r_{entry}"
    if entry == "module":
        executable = [sys.executable, "-m", "h3r_ros.ros.node_main"]
    else:
        executable = [str(_rendered_script(tmp_path))]
    log = tmp_path / "node.log"
    process = _start(_command(executable, name, tiny_assets().parameters()), log)
    try:
        assert wait_until(lambda: _state(ros, name) == State.PRIMARY_STATE_ACTIVE, 120.0, period=0.5), log.read_text()
        _process_one_frame(ros)
    finally:
        code = _stop(process, sig)
    text = log.read_text()
    assert code == 0, text
    _log_order(text, "inference thread stopped", "outputs closed", "model released", "shut down")
    assert "Traceback" not in text, text


def test_executable_stays_unconfigured_when_autostart_fails_and_exits_when_finalized(ros, tmp_path):
    name = "human3r_no_weights"
    params = tiny_assets().parameters(checkpoint=str(tmp_path / "missing.pth"))
    log = tmp_path / "node.log"
    process = _start(_command([sys.executable, "-m", "h3r_ros.ros.node_main"], name, params), log)
    try:
        # The node answers while autostart configures; then it stays unconfigured.
        assert wait_until(lambda: _state(ros, name) == State.PRIMARY_STATE_UNCONFIGURED, 60.0, period=0.2)
        request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_UNCONFIGURED_SHUTDOWN))
        assert ros.call(ChangeState, f"/{name}/change_state", request, timeout=30.0).success
        try:
            code = process.wait(timeout=60.0)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGUSR1)  # stacks into the log, to show where it hangs
            time.sleep(1.0)
            process.kill()
            process.wait()
    text = log.read_text()
    assert code == 0, text
    assert "does not exist" in text and "Traceback" not in text, text


PADDED_LOAD = 10.0  # s added to the node's load (configure) in the tests below
ANSWER_TIME = 1.0  # s within which the node must answer while it loads


def _padded_load_command(tmp_path: Path, name: str, pad: float) -> list[str]:
    """The node executable with ``pad`` s more of loading (standing in for gigabytes of weights)."""
    script = tmp_path / "padded_node.py"
    script.write_text(
        "import time\n"
        "from h3r_ros.ros import node\n"
        "real = node.load_engine\n"
        "def load_engine(settings, progress):\n"
        "    progress('padded load (test)')\n"
        f"    time.sleep({pad})\n"
        "    return real(settings, progress)\n"
        "node.load_engine = load_engine\n"
        "from h3r_ros.ros.node_main import run\n"
        "run()\n")
    return _command([sys.executable, str(script)], name, tiny_assets().parameters())


def _timed(client, request):
    """(response, seconds to answer); None for no answer within ANSWER_TIME s."""
    start = time.monotonic()
    future = client.call_async(request)
    answered = wait_until(future.done, ANSWER_TIME, period=0.005)
    if not answered:
        client.remove_pending_request(future)
        return None, time.monotonic() - start
    return future.result(), time.monotonic() - start


def test_the_executable_answers_while_it_loads_then_activates(ros, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.srv import GetParameters

    name = "human3r_slow_load"
    log = tmp_path / "node.log"
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    process = _start(_padded_load_command(tmp_path, name, PADDED_LOAD), log)
    state_client = ros.probe.create_client(GetState, f"/{name}/get_state")
    param_client = ros.probe.create_client(GetParameters, f"/{name}/get_parameters")
    try:
        assert state_client.wait_for_service(timeout_sec=60.0) and param_client.wait_for_service(timeout_sec=30.0)
        # A request sent before the server has matched this client is lost: once each client is
        # matched (a resent request answered), every answer is timed.
        for client, request in ((state_client, GetState.Request()), (param_client, GetParameters.Request())):
            assert wait_until(lambda: _timed(client, request)[0] is not None, 30.0, period=0.0), log.read_text()
        answers = []
        while len(answers) < 20:
            state, seconds = _timed(state_client, GetState.Request())
            assert state is not None, f"get_state unanswered for {seconds:.1f} s\n{log.read_text()}"
            if state.current_state.id != State.TRANSITION_STATE_CONFIGURING:
                break
            params, seconds = _timed(param_client, GetParameters.Request(names=["input_size"]))
            assert params is not None, f"get_parameters unanswered for {seconds:.1f} s"
            assert params.values[0].integer_value == tiny_assets().parameters()["input_size"]
            answers.append(state.current_state.label)
            time.sleep(0.25)
        assert len(answers) >= 4, answers  # answered throughout the padded load
        status = [
            {kv.key: kv.value for kv in st.values} for msg in diagnostics.messages for st in msg.status
            if st.name == f"/{name}: inference"]
        assert any(v["lifecycle state"] == "configuring" and v.get("loading") == "padded load (test)"
                   for v in status), status
        assert wait_until(lambda: _state(ros, name) == State.PRIMARY_STATE_ACTIVE, 120.0, period=0.5), log.read_text()
    finally:
        ros.probe.destroy_client(state_client)
        ros.probe.destroy_client(param_client)
        ros.probe.destroy_subscription(diagnostics.subscription)
        code = _stop(process, signal.SIGINT)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    _log_order(text, "active: reading", "shut down")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_load_ends_the_process_and_never_activates(ros, tmp_path, sig):
    from h3r_ros.ros.node_main import LOAD_EXIT_TIMEOUT

    name = f"human3r_stopped_load_{sig.name.lower()}"
    log = tmp_path / "node.log"
    process = _start(_padded_load_command(tmp_path, name, 60.0), log)
    try:
        assert wait_until(lambda: _state(ros, name) == State.TRANSITION_STATE_CONFIGURING, 60.0, period=0.2)
        start = time.monotonic()
        process.send_signal(sig)
        code = process.wait(timeout=30.0)
        elapsed = time.monotonic() - start
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    # The documented bound, plus the interpreter's own exit on a shared CPU.
    assert elapsed < LOAD_EXIT_TIMEOUT + 3.0, (elapsed, text)
    assert "exiting without finishing the load (the node was not activated)" in text
    assert "active: reading" not in text


# ------------------------------------------------------------------ failures with a cause


def _node_diagnostics(ros, node, predicate=lambda status, values: True, timeout: float = 10.0):
    """The next /diagnostics status of ``node`` that satisfies ``predicate``."""
    from diagnostic_msgs.msg import DiagnosticArray

    collector = ros.collect(DiagnosticArray, "/diagnostics")
    name = node.get_fully_qualified_name()

    def matching(msgs):
        for msg in msgs:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name.startswith(name) and predicate(status, values):
                    return status, values
        return None

    try:
        assert wait_until(lambda: matching(collector.messages) is not None, timeout)
        return matching(collector.messages)
    finally:
        ros.probe.destroy_subscription(collector.subscription)


def test_diagnostics_exist_from_start_and_report_why_configure_failed(make_node, ros, capfd, monkeypatch):
    import h3r_ros.ros.node as node_module

    node = make_node(**tiny_assets().parameters())
    _, values = _node_diagnostics(ros, node)  # before any transition
    assert values["lifecycle state"] == "unconfigured" and values["last error"] == "none"

    def exploding_loader(settings, progress):
        raise MemoryError("injected: out of memory while loading")

    monkeypatch.setattr(node_module, "load_engine", exploding_loader)
    assert node.trigger_configure() == FAILURE
    assert node.lifecycle_state == "unconfigured" and node._loaded is None and node.cameras[0].outputs is None
    err = capfd.readouterr().err
    assert "configure failed: MemoryError: injected: out of memory while loading" in err
    assert "Traceback (most recent call last)" in err and "exploding_loader" in err
    status, values = _node_diagnostics(ros, node, lambda s, v: "injected" in v["last error"])
    assert status.level == status.ERROR and "out of memory" in status.message

    monkeypatch.undo()  # the cause fixed, the same node configures
    assert node.trigger_configure() == SUCCESS and node.lifecycle_state == "inactive"
    _, values = _node_diagnostics(ros, node, lambda s, v: v["lifecycle state"] == "inactive")
    assert values["last error"] == "none"


@pytest.mark.parametrize("name, value, reason", [
    ("image_qos", "besteffort", "image_qos must be one of"),
    ("tf_mode", "map", "tf_mode must be one of"),
    ("dtype", "float64", "dtype must be one of"),
    ("variant", "1000XL", "variant must be one of"),
    ("device", "tpu", "device must be"),
    ("input_size", 100, "input_size is not a valid step"),
    ("input_size", 4096, "input_size out of range"),
    ("camera_frame", " ", "whitespace"),
    ("camera_frame", "/camera", "leading slash|starts with '/'"),
    ("camera_frame", "world", "must differ from world_frame"),
    ("world_frame", "", "must not be empty"),
    ("body_frame_prefix", "", "body_frame_prefix must start with a letter"),
    ("body_frame_prefix", "1_", "body_frame_prefix must start with a letter"),
    ("stamp_jump_threshold", -1.0, "stamp_jump_threshold"),
    ("max_image_pixels", 0, "max_image_pixels"),
])
def test_invalid_parameters_are_refused_from_start_up_and_at_runtime(make_node, name, value, reason):
    import re

    node = make_node(**tiny_assets().parameters(**{name: value}))  # as from a params file or -p
    default = getattr(parameters.DEFAULTS, name)
    assert node.get_parameter(name).value == default  # the invalid value was not applied
    assert re.search(reason, node._parameter_errors[name]), node._parameter_errors[name]
    assert node.trigger_configure() == FAILURE  # and the node says so rather than running without it
    assert node.lifecycle_state == "unconfigured" and name in node._last_error

    (result,) = node.set_parameters([Parameter(name, value=value)])  # the same value at runtime
    assert not result.successful
    assert re.search(reason, result.reason), result.reason
    assert node.get_parameter(name).value == default

    (result,) = node.set_parameters([Parameter(name, value=default)])  # setting it clears the error
    assert result.successful and name not in node._parameter_errors
    if name == "image_qos":  # one full configure is enough to show the node recovers
        assert node.trigger_configure() == SUCCESS


def test_configure_time_parameters_are_refused_while_configured(make_node):
    node = make_node(**tiny_assets().parameters())
    assert node.trigger_configure() == SUCCESS
    for name, value in (("input_size", 176), ("device", "auto"), ("world_frame", "map"),
                        ("compressed_input", True), ("image_qos", "reliable")):
        (result,) = node.set_parameters([Parameter(name, value=value)])
        assert not result.successful, name
        assert "cleanup" in result.reason.replace("clean up", "cleanup") and "configure" in result.reason
    (result,) = node.set_parameters([Parameter("tf_mode", value="camera_to_world")])  # live: applies now
    assert result.successful and node._settings.tf_mode == "camera_to_world"
    (result,) = node.set_parameters([Parameter("device", value="cpu")])  # unchanged value: harmless
    assert result.successful
    assert node.trigger_cleanup() == SUCCESS
    (result,) = node.set_parameters([Parameter("input_size", value=176)])
    assert result.successful
    assert node.trigger_configure() == SUCCESS and node._loaded.engine.config.size == 176


# ------------------------------------------------------------------ inputs and REP-155


def _configured_node(ros, cli_args: list[str]) -> Human3RNode:
    node = ros.add_node(Human3RNode(context=ros.context, cli_args=cli_args))
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    return node


def _finish(ros, node) -> None:
    node.trigger_shutdown()
    ros.remove_node(node)


def test_inputs_move_with_the_namespace_and_compressed_follows_the_image_remap(ros, tmp_path):
    """compressed_input set in a params file (not by launch) reads <remapped image>/compressed."""
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**/human3r_node": {"ros__parameters": tiny_assets().parameters(
        compressed_input=True)}}))
    cases = [
        ([], "/robot1/image/compressed"),
        (["-r", "image:=/cam/color/image_raw"], "/cam/color/image_raw/compressed"),
        (["-r", "image:=/cam/color/image_raw", "-r", "image/compressed:=/jpeg"], "/jpeg"),
    ]
    for remaps, expected in cases:
        node = _configured_node(ros, ["--ros-args", "-r", "__ns:=/robot1", *remaps, "--params-file", str(params)])
        try:
            topics = {sub.topic_name for sub in node._inputs}
            assert topics == {expected, "/robot1/camera_info"}, remaps
            assert wait_until(lambda: ros.probe.count_subscribers(expected) == 1)
        finally:
            _finish(ros, node)


def test_rep155_bodies_tracked_position_velocity_and_frames(ros):
    """REP-155 bodies with publish_body_tf on too: one frame per person, and its pose, the
    REP-155 position and Human.pelvis of one image agree."""
    from geometry_msgs.msg import PointStamped, TwistStamped
    from test_node_topics import pose_matrix, transform_matrix
    from hri_msgs.msg import IdsList
    from tf2_msgs.msg import TFMessage

    params = tiny_assets().parameters(publish_hri_bodies=True, publish_body_tf=True, track_timeout=1e6)
    args = ["--ros-args", "-r", "__node:=human3r_hri", *[a for k, v in params.items()
                                                       for a in ("-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}")]]
    node = _configured_node(ros, args)
    humans = ros.collect(HumanArray, "humans")
    tracked = ros.collect(IdsList, "/humans/bodies/tracked")
    tf = ros.collect(TFMessage, "/tf", 100)
    images = ros.probe.create_publisher(Image, "image", 1)
    try:
        assert wait_until(lambda: images.get_subscription_count() > 0 and humans.matched() and tracked.matched()
                          and tf.matched(), 30.0)
        # Matched as seen from the publisher does not mean the node has matched it yet: resend
        # (new stamps) until a frame comes through.
        deadline, first = time.monotonic() + 120.0, None
        while first is None and time.monotonic() < deadline:
            first_stamp = ros.probe.get_clock().now().to_msg()
            images.publish(image_msg(tiny_assets().frames[0], first_stamp))
            if wait_until(lambda: any(stamp_key(m.header.stamp) == stamp_key(first_stamp) for m in humans.messages),
                          5.0):
                first = humans.wait_stamp(first_stamp)
        assert first is not None, "timed out on /humans"
        assert first.humans, "the calibrated tiny model should detect people"
        ids = tracked.wait_stamp(first_stamp).ids
        assert ids == [f"b{h.track_id}" for h in first.humans]
        body = first.humans[0]
        position = ros.collect(PointStamped, f"/humans/bodies/b{body.track_id}/position")
        velocity = ros.collect(TwistStamped, f"/humans/bodies/b{body.track_id}/velocity")
        assert wait_until(lambda: position.matched() and velocity.matched(), 30.0)

        stamp = ros.probe.get_clock().now().to_msg()
        images.publish(image_msg(tiny_assets().frames[0], stamp))
        second = {h.track_id: h for h in humans.wait_stamp(stamp, 120.0).humans}
        assert second[body.track_id].track_state == Human.TRACK_TRACKED
        point = position.wait_stamp(stamp)
        pelvis = second[body.track_id].pelvis.position  # one pose per person: the model's, everywhere
        assert point.header.frame_id == "world"
        assert (point.point.x, point.point.y, point.point.z) == pytest.approx((pelvis.x, pelvis.y, pelvis.z), abs=1e-6)
        v = second[body.track_id].velocity
        if math.isnan(v.x):  # unknown (random weights can jump): nothing on the velocity topic
            time.sleep(0.5)
            assert not [m for m in velocity.messages if (m.header.stamp.sec, m.header.stamp.nanosec)
                        == (stamp.sec, stamp.nanosec)]
        else:
            twist = velocity.wait_stamp(stamp).twist.linear
            assert (twist.x, twist.y, twist.z) == (v.x, v.y, v.z)
        frames = {t.child_frame_id: t for m in tf.messages for t in m.transforms
                  if (t.header.stamp.sec, t.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)}
        # With publish_body_tf on as well, one frame per person: REP-155's name.
        seen = [h for h in second.values() if h.track_state != Human.TRACK_LOST]
        assert sorted(frames) == sorted([CAMERA, *(f"body_b{h.track_id}" for h in seen)])
        body_tf = frames[f"body_b{body.track_id}"]
        assert body_tf.header.frame_id == CAMERA
        # ... and the same pose as Human.pelvis and the REP-155 position.
        world_from_body = pose_matrix(humans.wait_stamp(stamp).camera_pose) @ transform_matrix(body_tf.transform)
        np.testing.assert_allclose(world_from_body, pose_matrix(second[body.track_id].pelvis), atol=1e-5)
        np.testing.assert_allclose(world_from_body[:3, 3], [point.point.x, point.point.y, point.point.z], atol=1e-5)
    finally:
        ros.probe.destroy_publisher(images)
        _finish(ros, node)


def test_rep155_is_refused_clearly_without_hri_msgs(make_node, capfd, monkeypatch):
    import importlib

    from h3r_ros.ros import hri_bodies

    monkeypatch.setitem(sys.modules, "hri_msgs", None)  # import hri_msgs now raises ImportError
    monkeypatch.delitem(sys.modules, "hri_msgs.msg", raising=False)
    importlib.reload(hri_bodies)
    try:
        assert hri_bodies.IdsList is None
        node = make_node(**tiny_assets().parameters(publish_hri_bodies=True))
        assert node.trigger_configure() == FAILURE and node.lifecycle_state == "unconfigured"
        assert "publish_hri_bodies is true but hri_msgs (ROS4HRI) is not installed" in capfd.readouterr().err
        plain = make_node(**tiny_assets().parameters())
        assert plain.trigger_configure() == SUCCESS  # everything else runs without it
    finally:
        monkeypatch.undo()
        importlib.reload(hri_bodies)
