"""Environment that confines ROS 2 / Fast DDS traffic to this host."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

LOOPBACK_PROFILE = Path(__file__).resolve().parent.parent / "config" / "fastdds_loopback.xml"


def loopback_env(domain_id: int | None = None, log_dir: str | None = None) -> dict[str, str]:
    """Variables for a loopback-only ROS 2 run: discovery range, DDS profile, domain, log dir.

    A random domain id (1..100) keeps concurrent runs on one host from seeing each other.
    """
    if not LOOPBACK_PROFILE.is_file():
        raise FileNotFoundError(f"loopback DDS profile missing: {LOOPBACK_PROFILE}")
    return {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "ROS_DOMAIN_ID": str(domain_id if domain_id is not None else random.randint(1, 100)),
        "ROS_LOG_DIR": log_dir or tempfile.mkdtemp(prefix="h3r_ros_log_"),
    }


def apply_loopback_env(**kwargs) -> dict[str, str]:
    """Set :func:`loopback_env` in ``os.environ`` (before rclpy initialises) and return it."""
    env = loopback_env(**kwargs)
    os.environ.update(env)
    return env
