"""A new user's first commands, through the real ``ros2`` CLI in a fresh bash with nothing of ROS
set (only the suite's loopback DDS settings, which every ROS process of the tests keeps):

1. The project's venv: after ``source <venv>/bin/activate`` alone (the README's line),
   ``ros2 pkg prefix``, ``ros2 interface show``, ``ros2 run h3r_ros human3r_node`` and
   ``ros2 topic echo /humans`` work, and the installed package's models folder is the one
   ``scripts/fetch_weights.sh`` fills.
2. The README's robot workspace commands, taken from its code block so they cannot drift, in
   a temporary ``~/ros2_ws`` holding a copy of this working tree: ``colcon build
   --packages-select h3r_ros`` and ``source install/setup.bash``. Here ROS 2 comes from the
   venv instead of /opt/ros, and ``rosdep install`` (apt only) cannot run: it is skipped, and
   the README's pip line is checked against the locks instead of run. Then the weights fetch
   of the README (against the local Hub stand-in, test/hub_server.py) and ``ros2 launch`` with
   no checkpoint argument: the launched node finds the fetched weights and gets parameter
   arguments with their types.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hub_server import FakeHub
from ros_tools import LAUNCH_TOOLS, REPO, require_modules

from ros_helpers import RosHarness, image_msg, tiny_assets
from sensor_msgs.msg import Image

from h3r_ros import weights
from h3r_ros.dds_env import loopback_env

VENV = Path(sys.prefix)
ACTIVATE = f"source {shlex.quote(str(VENV / 'bin' / 'activate'))}"
# Names no other test's node has: a node of an earlier test that DDS still lists would take
# the ros2 CLI's calls (ros2 lifecycle get waits on a service call without a timeout).
RUN_NODE = "first_contact_run"
LAUNCH_NAMESPACE = "first_contact"
STEP_TIMEOUT = 120.0  # s; the CPU is shared with other test processes


@pytest.fixture(scope="module")
def ros2_cli():
    # Not at import: a module-level skip stops launch_testing's collection of the whole suite.
    require_modules(*LAUNCH_TOOLS, "ros2interface", "ros2run")


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A login-like environment: a plain PATH and HOME, the loopback DDS settings of this run."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8"),
           "PYTHONUNBUFFERED": "1"}
    env.update(loopback_env(domain_id=int(os.environ["ROS_DOMAIN_ID"]), log_dir=os.environ["ROS_LOG_DIR"]))
    env.update({k: v for k, v in os.environ.items() if k.startswith("HF_")})
    env.update(extra)
    return env


def bash(script: str, env: dict, timeout: float = 120.0, cwd: Path | None = None) -> str:
    result = subprocess.run(["bash", "-c", f"set -e\n{script}"], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result.stdout


class Shell:
    """A long-running command in its own bash (own process group, so SIGINT reaches what it
    starts, as Ctrl-C would)."""

    def __init__(self, script: str, env: dict, log: Path, cwd: Path | None = None):
        self.log = log
        self._out = log.open("w")
        self.process = subprocess.Popen(["bash", "-c", f"set -e\n{script}"], env=env, cwd=cwd, stdout=self._out,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._out.close()
        return self.process.returncode


def wait_active(prefix: str, env: dict, shell: Shell, node: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    state = ""
    while time.monotonic() < deadline and shell.process.poll() is None:
        result = subprocess.run(["bash", "-c", f"{prefix} && ros2 lifecycle get {node} --no-daemon"], env=env,
                                capture_output=True, text=True, timeout=60)
        state = result.stdout + result.stderr
        if result.returncode == 0 and state.startswith("active"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{node} never became active: {state}\n{shell.text()}")


def param_dump(prefix: str, env: dict, node: str) -> dict:
    """The node's parameters from `ros2 param dump`, typed as YAML reads them, retried until
    the node answers (each call discovers the graph afresh)."""
    out = ""
    for _ in range(20):
        result = subprocess.run(["bash", "-c", f"{prefix} && ros2 param dump {node} --no-daemon"], env=env,
                                capture_output=True, text=True, timeout=60)
        out = result.stdout + result.stderr
        if result.returncode == 0 and "ros__parameters" in result.stdout:
            return yaml.safe_load(result.stdout)[node]["ros__parameters"]
        time.sleep(0.3)
    raise AssertionError(f"ros2 param dump: {out}")


# ---------------------------------------------------------------------------------------------
# 1. The venv, activated


def test_activate_alone_lets_ros2_find_the_package_its_interfaces_and_its_models(ros2_cli, tmp_path):
    env = user_env(tmp_path)
    out = bash(f"{ACTIVATE}\nros2 pkg prefix h3r_ros\nros2 interface show h3r_ros/msg/Human\n"
               "python -c 'from ament_index_python.packages import get_package_share_directory as d; "
               "import pathlib; print(pathlib.Path(d(\"h3r_ros\"), \"models\").resolve())'", env)
    lines = out.splitlines()
    assert lines[0] == str(VENV)
    assert "uint32 track_id" in out and "geometry_msgs/Pose pelvis" in out
    # The installed node looks there; scripts/fetch_weights.sh writes there.
    assert lines[-1] == str(weights.default_dest().resolve()) == str(REPO / "models")


def test_activate_works_in_a_shell_with_set_u_and_keeps_it(ros2_cli, tmp_path):
    # Scripts often run with `set -euo pipefail`; colcon's setup scripts read unset variables.
    out = bash(f"set -u\n{ACTIVATE}\nros2 pkg prefix h3r_ros\necho \"flags $-\"", user_env(tmp_path))
    lines = out.splitlines()
    assert lines[0] == str(VENV)
    assert lines[-1].startswith("flags ") and "u" in lines[-1].split()[1]


def test_ros2_run_and_topic_echo_after_activate(ros2_cli, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": tiny_assets().parameters()}}))
    env = user_env(tmp_path)
    node = Shell(f"{ACTIVATE}\nexec ros2 run h3r_ros human3r_node --ros-args -r __node:={RUN_NODE} "
                 f"--params-file {params}", env, tmp_path / "node.log")
    echo = None
    ros = RosHarness()
    try:
        wait_active(ACTIVATE, env, node, f"/{RUN_NODE}")
        echo = Shell(f"{ACTIVATE}\nexec ros2 topic echo /humans --once --no-daemon --spin-time 3", env, tmp_path / "echo.log")
        images = ros.probe.create_publisher(Image, "image", 10)
        frame = tiny_assets().frames[0]
        deadline = time.monotonic() + STEP_TIMEOUT
        while echo.process.poll() is None and time.monotonic() < deadline:
            if images.get_subscription_count() > 0:
                images.publish(image_msg(frame, ros.probe.get_clock().now().to_msg()))
            time.sleep(0.5)
        assert echo.process.poll() == 0, echo.text()
        assert "frame_id: world" in echo.text() and "camera_frame_id: camera_optical" in echo.text(), echo.text()
    finally:
        ros.close()
        if echo is not None:
            echo.stop()
        assert node.stop() == 0, node.text()
    assert 0 <= node.text().find("model released") < node.text().find("]: shut down"), node.text()


# ---------------------------------------------------------------------------------------------
# 2. The README's robot workspace


def readme_build_commands() -> list[str]:
    """The commands of the README's code block under '### Build' (comments dropped)."""
    section = (REPO / "README.md").read_text().split("\n### Build\n", 1)[1]
    block = re.search(r"\n\n((?:    .*\n)+)", section).group(1)
    lines = [line[4:].split("  #", 1)[0].rstrip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _lock_pins(lock: str) -> dict[str, str]:
    return dict(line.lower().split("==", 1) for line in (REPO / lock).read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def test_readme_pip_line_pins_what_both_locks_pin():
    (pip_line,) = [c for c in readme_build_commands() if c.startswith("pip install ")]
    pins = [arg.lower().split("==") for arg in pip_line.split()[2:]]
    assert pins and all(len(pin) == 2 for pin in pins), pip_line
    for lock in ("requirements.lock", "requirements-jazzy.lock"):
        locked = _lock_pins(lock)
        assert {name: locked.get(name) for name, _ in pins} == dict(pins), lock


CLONE = "git clone <this repository> h3r_ros"


@pytest.fixture(scope="module")
def workspace(ros2_cli, tmp_path_factory):
    """The README's build commands run in a fresh bash with HOME at a temporary folder."""
    home = tmp_path_factory.mktemp("home")
    source = tmp_path_factory.mktemp("source") / "h3r_ros"  # this working tree, as a clone would be
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    script = [ACTIVATE]  # here ROS 2 comes from the venv, on a robot from /opt/ros/<distro>/setup.bash
    for command in readme_build_commands():
        if command.startswith("rosdep install"):
            continue  # apt only: cannot run here
        if command.startswith("pip install"):
            continue  # test_readme_pip_line_pins_what_both_locks_pin; the venv has them
        assert "git clone" not in command or CLONE in command, command
        script.append(command.replace(CLONE, f"cp -r {shlex.quote(str(source))} h3r_ros"))
    assert any(c.startswith("colcon build") for c in script) and script[-1].startswith("source install/")
    env = user_env(home)
    out = bash("\n".join(script + ["ros2 pkg prefix h3r_ros"]), env, timeout=600)
    return home / "ros2_ws", env, out


def test_readme_workspace_commands_build_and_source_the_package(workspace):
    ws, _, out = workspace
    assert out.splitlines()[-1] == str(ws / "install" / "h3r_ros")
    assert (ws / "install" / "h3r_ros" / "share" / "h3r_ros" / "models").resolve() == ws / "src" / "h3r_ros" / "models"


def test_launched_node_finds_the_fetched_weights_and_takes_typed_parameter_arguments(workspace, tmp_path):
    ws, env, _ = workspace
    prefix = f"{ACTIVATE} && cd {shlex.quote(str(ws))} && source install/setup.bash"
    tiny = tiny_assets().checkpoint.read_bytes()
    with FakeHub(weights.REPO_ID, {"human3r_672S.pth": tiny}) as hub:
        fetch_env = env | {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        fetch_env.pop("HF_HUB_OFFLINE", None)
        out = bash(f"{prefix}\npython3 -m h3r_ros.weights fetch", fetch_env, timeout=300)
    fetched = ws / "src" / "h3r_ros" / "models" / "human3r_672S.safetensors"
    assert fetched.is_file(), out

    arguments = (f"namespace:={LAUNCH_NAMESPACE} device:=cpu dtype:=float32 input_size:=160 publish_hri_bodies:=true "
                 "track_timeout:=7 world_frame:=map")
    node = Shell(f"{prefix}\nexec ros2 launch h3r_ros human3r.launch.py {arguments}", env, tmp_path / "launch.log")
    name = f"/{LAUNCH_NAMESPACE}/human3r_node"
    try:
        wait_active(prefix, env, node, name)
        values = param_dump(prefix, env, name)
        got = {name: (values[name], type(values[name])) for name in
               ("input_size", "publish_hri_bodies", "track_timeout", "world_frame", "checkpoint")}
        assert got == {"input_size": (160, int), "publish_hri_bodies": (True, bool), "track_timeout": (7.0, float),
                       "world_frame": ("map", str), "checkpoint": ("", str)}
    finally:
        assert node.stop() == 0, node.text()
    loaded = [line for line in node.text().splitlines() if "loaded Human3R:" in line]
    assert loaded and str(ws / "install" / "h3r_ros" / "share" / "h3r_ros" / "models" / fetched.name) in loaded[0], \
        node.text()
    assert "model released" in node.text()
