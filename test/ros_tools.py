"""The ROS 2 command-line and launch tools the launch tests need (launch, launch_ros,
launch_pytest, ros2cli, sensor_msgs_py): from a ROS installation, or installed into the venv
by scripts/setup.sh from ../shared/vendor. Where they are missing the tests that need them
skip with the reason; under CI=true they fail instead."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENDOR_DIR = REPO.parent / "shared" / "vendor"
LAUNCH_TOOLS = ("launch", "launch_ros", "launch_pytest", "ros2cli", "ros2launch", "ros2lifecycle", "ros2param",
                "ros2topic", "sensor_msgs_py", "composition_interfaces.srv")


def _missing(message: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_modules(*names: str) -> None:
    """Skip (fail under CI) unless every module imports."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        _missing(f"ROS 2 tools not installed ({', '.join(missing)}): install ROS 2 or put the vendored "
                 f"sources in {VENDOR_DIR / 'ros2-jazzy'} and run scripts/setup.sh")


def ros2_executable() -> str:
    """The `ros2` command next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / "ros2"
    found = str(candidate) if candidate.exists() else shutil.which("ros2")
    if found is None:
        _missing("the ros2 command is not installed")
    return found


def vendor_file(archive: str) -> Path:
    """A vendored archive (e.g. rviz.tar.gz), skipping (failing under CI) when absent."""
    path = VENDOR_DIR / "ros2-jazzy" / archive
    if not path.is_file():
        _missing(f"{path} not found: clone the repository next to the project's shared/ folder")
    return path


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for ROS tools started by a test: this process's (the loopback DDS settings
    that conftest applied), the ament index covering the venv, and the venv's bin on PATH."""
    env = dict(os.environ)
    prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if sys.prefix not in prefixes:
        prefixes.append(sys.prefix)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(prefixes)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
