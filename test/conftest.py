"""Suite-wide setup: every test process talks DDS on loopback only, in its own domain; tests
whose module imports ROS 2 carry the ``ros`` mark."""

import ast
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

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


# ROS 2 itself: a test module that imports any of these, directly or through the package's or
# the suite's own modules, runs against the ROS 2 distribution. The others are pure
# PyTorch/NumPy and give the same result on every distribution.
_ROS_ROOTS = ("rclpy", "launch", "launch_ros", "launch_testing", "launch_pytest", "ros2cli", "rosbags",
              "builtin_interfaces", "rcl_interfaces", "h3r_ros.msg", "h3r_ros.dds_env")
_TEST_DIR = Path(__file__).resolve().parent


def _source(name: str) -> Path | None:
    """The file of a module of this repository (package or test helper), if it is one."""
    base = REPO_ROOT if name.split(".")[0] == "h3r_ros" else _TEST_DIR
    stem = base.joinpath(*name.split("."))
    for path in (stem.with_suffix(".py"), stem / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_ros(name: str) -> bool:
    return name.split(".")[0].endswith("_msgs") or any(name == r or name.startswith(r + ".") for r in _ROS_ROOTS)


def _is_tf2(name: str) -> bool:
    return name.split(".")[0] in ("tf2_msgs", "tf2_ros")


def _statements(tree: ast.AST, module_level: bool):
    """Every node of ``tree``; with ``module_level``, none inside functions or classes."""
    for node in ast.iter_child_nodes(tree):
        yield node
        if not (module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))):
            yield from _statements(node, module_level)


def _imports(path: Path, seen: set[Path], wanted, package: bool = True, module_level: bool = False) -> bool:
    """Whether the module at ``path`` imports a ``wanted`` module, itself or through the
    suite's helpers (and, with ``package``, through this package's modules); with
    ``module_level``, only imports that run when the module is imported."""
    seen.add(path)
    for node in _statements(ast.parse(path.read_text()), module_level):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if wanted(name):
                return True
            source = _source(name) if package or name.split(".")[0] != "h3r_ros" else None
            if source is not None and source not in seen and _imports(source, seen, wanted, package, module_level):
                return True
    return False


def pytest_configure(config):
    config.addinivalue_line("markers", "ros: the test's module imports ROS 2 (it runs on every distribution)")


class _NeedsTf2(pytest.Module):
    """A test module that imports tf2, collected where tf2 is missing: skipped with the
    reason (failed under CI=true) instead of an import error. It is decided here, before
    launch_testing's plugin imports the module: an error or skip there stops all collection."""

    def collect(self):
        from ros_tools import require_modules

        require_modules("tf2_msgs.msg", "tf2_ros")
        return super().collect()


def pytest_pycollect_makemodule(module_path, parent):
    # The package itself runs without tf2 (no /tf); the tests that read /tf cannot.
    missing = any(importlib.util.find_spec(name) is None for name in ("tf2_msgs", "tf2_ros"))
    if missing and _imports(module_path, set(), _is_tf2, package=False, module_level=True):
        return _NeedsTf2.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(config, items):
    verdicts = {}
    for item in items:
        if item.path not in verdicts:
            verdicts[item.path] = _imports(item.path, set(), _is_ros)
        if verdicts[item.path]:
            item.add_marker(pytest.mark.ros)
