"""Environment that confines ROS 2 / Fast DDS traffic to this host."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

PROFILE_NAME = "fastdds_loopback.xml"


def loopback_profile() -> Path:
    """The profile in a source checkout (config/ beside the package), else the installed one."""
    in_checkout = Path(__file__).resolve().parent.parent / "config" / PROFILE_NAME
    if in_checkout.is_file():
        return in_checkout
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("h3r_ros")) / "config" / PROFILE_NAME
    except (ImportError, LookupError, OSError):  # no ament index, package not installed
        return in_checkout


def loopback_env(domain_id: int | None = None, log_dir: str | None = None) -> dict[str, str]:
    """Variables for a loopback-only ROS 2 run: discovery range, DDS profile, domain, log dir.

    A random domain id (1..100) keeps concurrent runs on one host from seeing each other.
    """
    profile = loopback_profile()
    if not profile.is_file():
        raise FileNotFoundError(f"loopback DDS profile missing: {profile}")
    return {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "ROS_DOMAIN_ID": str(domain_id if domain_id is not None else random.randint(1, 100)),
        "ROS_LOG_DIR": log_dir or tempfile.mkdtemp(prefix="h3r_ros_log_"),
    }


def apply_loopback_env(**kwargs) -> dict[str, str]:
    """Set :func:`loopback_env` in ``os.environ`` (before rclpy initialises) and return it."""
    env = loopback_env(**kwargs)
    os.environ.update(env)
    return env
