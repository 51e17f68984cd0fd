"""The launch file's arguments through the real `ros2 launch` (declared set: its own and every
node parameter; defaults; rejected values and names), its params file against the node, and
rviz/human3r.rviz against RViz 2's plugin list (rviz_default_plugins' plugins_description.xml,
vendored)."""

import importlib.util
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ros_tools import LAUNCH_TOOLS, REPO, require_modules, ros2_executable, tool_env, vendor_file

LAUNCH_FILE = REPO / "launch" / "human3r.launch.py"
RVIZ_FILE = REPO / "rviz" / "human3r.rviz"
PARAMS_FILE = REPO / "config" / "human3r.yaml"
# The launch file's own arguments; every node parameter is one too.
OWN_ARGUMENTS = {"namespace", "params_file", "use_sim_time", "image_topic", "camera_info_topic", "rviz"}
# Section of the RViz config -> the plugin base class its entries must have.
RVIZ_BASES = {"Displays": "rviz_common::Display", "Tools": "rviz_common::Tool",
              "Views": "rviz_common::ViewController"}


def _ros2_launch(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    require_modules(*LAUNCH_TOOLS)
    return subprocess.run([ros2_executable(), "launch", *args], env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_show_args_lists_every_argument_and_parameter_with_its_default():
    from h3r_ros.ros.parameters import documented_defaults

    result = _ros2_launch("h3r_ros", "human3r.launch.py", "--show-args")
    assert result.returncode == 0, result.stderr
    declared = {line.strip().strip("':") for line in result.stdout.splitlines() if line.startswith("    '")}
    assert declared == OWN_ARGUMENTS | set(documented_defaults())
    blocks = {block.split("'", 2)[1]: block for block in result.stdout.split("\n\n")[1:]}
    for name, default in (("image_topic", "image"), ("camera_info_topic", "camera_info"), ("rviz", "false")):
        assert f"(default: '{default}')" in blocks[name], blocks[name]
    for name, (default, description) in documented_defaults().items():
        text = " ".join(blocks[name].split())
        assert " ".join(description.split()) in text and f"node default {default!r}" in text, text
        assert "(default: '')" in text  # unset: the params file decides


@pytest.mark.parametrize("arguments, message", [
    (["tf_mode:=map_to_odom"], "Valid options are: ['', 'world_to_camera', 'camera_to_world', 'none']"),
    (["rviz:=maybe"], "launch argument rviz:='maybe' is not a boolean"),
    (["publish_hri_bodies:=maybe"], "launch argument publish_hri_bodies:='maybe' is not a boolean"),
    (["input_size:=1.5"], "launch argument input_size:='1.5' is not an integer (parameter input_size, default 512)"),
    (["track_timeout:=soon"], "launch argument track_timeout:='soon' is not a number"),
    (["input_size:=160", "publish_hri_body:=true", "inputsize:=160"],
     "unknown launch argument(s) inputsize, publish_hri_body: neither a launch argument nor a parameter"),
])
def test_a_bad_argument_is_rejected_before_anything_starts(arguments, message):
    result = _ros2_launch(str(LAUNCH_FILE), *arguments)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output
    assert "process started" not in output
    if "unknown" in message:
        valid = output.split("Valid names: ", 1)[1].split()
        assert {"namespace,", "rviz,", "input_size,", "publish_hri_bodies,"} <= set(valid), valid


def _launch_module():
    require_modules("launch", "launch_ros")
    spec = importlib.util.spec_from_file_location("human3r_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_params_file_matches_the_node():
    """The params file applies under the launched node's name in any namespace and sets only
    parameters the node declares."""
    from h3r_ros.ros.parameters import documented_defaults

    module = _launch_module()
    params = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(params) == ["/**/" + module.NODE_NAME]
    assert set(params["/**/" + module.NODE_NAME]["ros__parameters"]) <= set(documented_defaults())


@pytest.mark.parametrize("argv, configurations, unknown", [
    (["input_size:=160", "bogus:=1"], {"input_size": "160", "bogus": "1", "rviz": "false"}, ["bogus"]),
    # Included from a file that passes on only its own arguments (GroupAction, forwarding=False).
    (["robot:=r1"], {"image_topic": "cam", "rviz": "false"}, []),
    (["launch-prefix:=gdb"], {"launch-prefix": "gdb"}, []),
])
def test_unknown_names_are_the_command_line_ones_that_reach_the_file(argv, configurations, unknown):
    context = SimpleNamespace(argv=argv, launch_configurations=configurations)
    assert _launch_module().unknown_arguments(context, {"input_size", "image_topic", "rviz"}) == unknown


def test_a_bare_params_file_name_is_one_of_the_package_configs(tmp_path, monkeypatch):
    from launch import LaunchContext

    monkeypatch.setenv("AMENT_PREFIX_PATH", tool_env()["AMENT_PREFIX_PATH"])  # the installed package
    module, context = _launch_module(), LaunchContext()
    shipped = Path(module._params_file("two_cameras.yaml", context))
    assert shipped.name == "two_cameras.yaml" and shipped.parent.name == "config" and shipped.is_file()
    cameras = yaml.safe_load(shipped.read_text())["/**/" + module.NODE_NAME]["ros__parameters"]["cameras"]
    assert cameras == ["front", "rear"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two_cameras.yaml").write_text("{}")  # a file of that name here wins
    assert module._params_file("two_cameras.yaml", context) == "two_cameras.yaml"
    assert module._params_file(str(tmp_path / "mine.yaml"), context) == str(tmp_path / "mine.yaml")


@pytest.mark.parametrize("text, default, value", [
    ("160", 512, 160), ("true", False, True), ("Off", True, False), ("5", 1.0, 5.0), ("2.5e-1", 1.0, 0.25),
    ("cpu", "auto", "cpu"), ("42", "", "42"), ("[front,rear]", (), ["front", "rear"]), ("[ a ]", (), ["a"]),
    ("[]", (), []),
])
def test_parameter_arguments_take_the_parameter_type(text, default, value):
    converted = _launch_module().parameter_value("name", text, default)
    assert converted == value and type(converted) is (list if isinstance(default, tuple) else type(default))


@pytest.mark.parametrize("text", ["front,rear", "[front,,rear]", "[front"])
def test_a_list_argument_must_be_a_list_of_names(text):
    with pytest.raises(ValueError, match="is not a list of names"):
        _launch_module().parameter_value("cameras", text, ())


def _rviz_plugins() -> dict[str, set[str]]:
    """class name -> base class types (TF is both a display and a frame transformer), from the
    vendored rviz_default_plugins."""
    with tarfile.open(vendor_file("rviz.tar.gz")) as archive:
        xml = archive.extractfile("rviz/rviz_default_plugins/plugins_description.xml").read()
    plugins: dict[str, set[str]] = {}
    for entry in ET.fromstring(xml).iter("class"):
        plugins.setdefault(entry.get("name"), set()).add(entry.get("base_class_type"))
    return plugins


def _rviz_classes(config: dict):
    """(section, class) for every plugin entry of the config, nested displays included."""
    manager = config["Visualization Manager"]

    def displays(entries):
        for entry in entries:
            yield "Displays", entry["Class"]
            yield from displays(entry.get("Displays", []))

    yield from displays(manager["Displays"])
    for tool in manager["Tools"]:
        yield "Tools", tool["Class"]
    yield "Views", manager["Views"]["Current"]["Class"]


def test_every_rviz_plugin_class_exists_in_rviz_default_plugins():
    plugins = _rviz_plugins()
    config = yaml.safe_load(RVIZ_FILE.read_text())
    used = list(_rviz_classes(config))
    assert {section for section, _ in used} == set(RVIZ_BASES)
    for section, name in used:
        assert name in plugins, f"{section}: {name} is not an rviz_default_plugins class"
        assert RVIZ_BASES[section] in plugins[name], (name, plugins[name])


def test_rviz_config_shows_every_output_with_matching_qos():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "world"
    topics = {d["Topic"]["Value"]: d for d in manager["Displays"] if "Topic" in d}
    assert topics["cloud"]["Class"] == "rviz_default_plugins/PointCloud2"
    assert topics["map_cloud"]["Class"] == "rviz_default_plugins/PointCloud2"
    assert topics["map_cloud"]["Topic"]["Durability Policy"] == "Transient Local"
    assert topics["map_cloud"]["Topic"]["Reliability Policy"] == "Reliable"
    assert topics["markers"]["Class"] == "rviz_default_plugins/MarkerArray"
    assert topics["camera_path"]["Class"] == "rviz_default_plugins/Path"
    assert topics["image"]["Class"] == "rviz_default_plugins/Image"
    assert topics["image"]["Topic"]["Reliability Policy"] == "Best Effort"
    for cloud in ("cloud", "map_cloud"):
        assert topics[cloud]["Color Transformer"] == "RGB8"
