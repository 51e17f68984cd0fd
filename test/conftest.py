"""Suite-wide setup: every test process talks DDS on loopback only, in its own domain."""

import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from h3r_ros.dds_env import apply_loopback_env  # noqa: E402

# Set before any test imports rclpy: the RMW reads these when the first context starts.
# The domain id is derived from the pid so parallel runs on one host stay apart.
apply_loopback_env(domain_id=1 + os.getpid() % 100)

# No test may reach the real Hugging Face Hub, nor read this machine's Hugging Face cache:
# offline, an endpoint on a loopback port nothing listens on, and an empty HF_HOME (tests
# that use the local Hub stand-in lift this for their own subprocesses).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="h3r_test_hf_home_")
