"""Suite-wide setup: every test process talks DDS on loopback only, in its own domain."""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from h3r_ros.dds_env import apply_loopback_env  # noqa: E402

# Set before any test imports rclpy: the RMW reads these when the first context starts.
# The domain id is derived from the pid so parallel runs on one host stay apart.
apply_loopback_env(domain_id=1 + os.getpid() % 100)
