"""package.xml declares what the installed package imports, with keys rosdep resolves on
Ubuntu 24.04 (checked against rosdistro's rosdep files, vendored in ../shared/vendor/rosdistro)."""

import ast
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from ros_tools import REPO, VENDOR_DIR, _missing

# Import name -> rosdep key, where they differ (ROS packages are their own keys).
SYSTEM_KEYS = {"PIL": "python3-pil", "cv2": "python3-opencv", "numpy": "python3-numpy", "scipy": "python3-scipy",
               "yaml": "python3-yaml", "torch": "python3-torch", "rosbags": "python3-rosbags-pip",
               "huggingface_hub": "python3-huggingface-hub-pip", "httpx2": "python3-huggingface-hub-pip",
               "tf2_ros": "tf2_ros_py"}  # the Python tf2_ros is ROS 2's package tf2_ros_py
PIP_ONLY = {"smplx", "roma", "safetensors"}  # no rosdep key: the README's pip line installs them


def _declared() -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {e.text for e in root if e.tag in ("depend", "exec_depend", "build_depend", "buildtool_depend")}


def _imports() -> set[str]:
    names = set()
    for path in (REPO / "h3r_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"h3r_ros", "__future__"}


def _rosdep_rules() -> dict:
    folder = VENDOR_DIR / "rosdistro"
    if not folder.is_dir():
        _missing(f"{folder} not found: clone the repository next to the project's shared/ folder")
    rules = {}
    for name in ("base.yaml", "python.yaml"):
        rules.update(yaml.safe_load((folder / name).read_text()))
    return rules


def test_every_import_is_declared():
    declared = _declared()
    missing = {name for name in _imports() - PIP_ONLY if SYSTEM_KEYS.get(name, name) not in declared}
    assert not missing, f"imports without a package.xml dependency: {sorted(missing)}"


@pytest.mark.parametrize("key", sorted(k for k in _declared() if k.startswith("python3-")))
def test_system_keys_resolve_on_ubuntu_noble(key):
    rule = _rosdep_rules().get(key)
    assert rule is not None, f"{key} is not a rosdep key"
    ubuntu = rule.get("ubuntu", rule.get("*")) if isinstance(rule, dict) else None
    assert ubuntu is not None, f"{key} has no Ubuntu rule: {rule}"
    if isinstance(ubuntu, dict) and "pip" not in ubuntu:
        ubuntu = ubuntu.get("noble", ubuntu.get("*"))
    assert ubuntu, f"{key} does not resolve on Ubuntu 24.04: {rule}"


# What the tests without the "ros" mark load (test/conftest.py): on the second distribution
# they are skipped, which is only sound while both locks pin these alike.
NUMERICAL_STACK = ("torch", "numpy", "scipy", "smplx", "roma", "safetensors", "pillow", "omegaconf",
                   "opencv-python-headless", "huggingface_hub", "pytest")


def _pins(lock: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / lock).read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower()] = version.split(";")[0].strip()
    return pins


def test_both_distributions_pin_the_numerical_stack_alike():
    kilted, jazzy = _pins("requirements.lock"), _pins("requirements-jazzy.lock")
    for name in NUMERICAL_STACK:
        assert name in kilted, f"{name} is not pinned in requirements.lock"
        assert kilted[name] == jazzy.get(name), f"{name}: {kilted[name]} (Kilted) vs {jazzy.get(name)} (Jazzy)"
