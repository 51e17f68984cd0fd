"""Checks of launch/human3r.launch.py and rviz/human3r.rviz without ROS 2 tooling.

`launch` and `launch_ros` are not installable here (not on PyPI; the PyPI package named
`launch` is an unrelated project), so `ros2 launch` cannot run this file. These tests:

1. parse the file with `ast` (valid syntax, the real launch / launch_ros import names);
2. execute `generate_launch_description()` and its OpaqueFunction against minimal stand-in
   modules injected into `sys.modules` that only record constructor arguments and resolve
   LaunchConfiguration / PathJoinSubstitution / FindPackageShare the way launch does.

The stand-ins mimic the signatures the file relies on (e.g. LifecycleNode's keyword-only
`name` and `namespace`, DeclareLaunchArgument's `choices` check). They verify which
arguments are declared and which node, parameters and remappings the file asks for; they
do not prove launch_ros behaves the same, which needs a real ROS 2 installation.

The RViz config is checked as YAML for the displays, topics, QoS and fixed frame.
"""

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "human3r.launch.py"
RVIZ_FILE = REPO / "rviz" / "human3r.rviz"

EXPECTED_ARGUMENTS = {
    "namespace", "params_file", "use_sim_time", "image_topic", "camera_info_topic",
    "compressed_input", "checkpoint", "smplx_dir", "device", "world_frame", "camera_frame",
    "tf_mode", "autostart", "rviz",
}


class _Recorded:
    """Base of the stand-in actions: keeps the positional and keyword arguments."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class _LaunchDescription(_Recorded):
    pass


class _DeclareLaunchArgument(_Recorded):
    def __init__(self, name, *, default_value=None, description="", choices=None):
        super().__init__(name, default_value=default_value, description=description, choices=choices)
        self.name = name
        self.default_value = default_value
        if choices is not None and isinstance(default_value, str) and default_value not in choices:
            raise ValueError(f"default {default_value!r} of {name} not in choices")
        self.choices = choices


class _OpaqueFunction(_Recorded):
    def __init__(self, *, function, args=None, kwargs=None):
        super().__init__(function=function)
        self.function = function


class _LaunchConfiguration:
    def __init__(self, variable_name, default=None):
        self.name = variable_name

    def perform(self, context):
        return context.launch_configurations[self.name]


def _perform(value, context):
    return value if isinstance(value, str) else value.perform(context)


class _PathJoinSubstitution:
    def __init__(self, substitutions):
        self.parts = substitutions

    def perform(self, context):
        return str(Path(*(_perform(p, context) for p in self.parts)))


class _FindPackageShare:
    """Resolves to the source tree, whose launch/config/rviz layout the install copies."""

    def __init__(self, package):
        assert package == "h3r_ros"

    def perform(self, context):
        return str(REPO)


class _LifecycleNode(_Recorded):
    def __init__(self, *, name, namespace, **kwargs):  # keyword-only, as in Humble/Jazzy
        super().__init__(name=name, namespace=namespace, **kwargs)


class _Node(_Recorded):
    pass


@pytest.fixture
def launch_module(monkeypatch):
    """The launch file imported against the recording stand-ins."""
    stubs = {
        "launch": {"LaunchDescription": _LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": _DeclareLaunchArgument, "OpaqueFunction": _OpaqueFunction},
        "launch.substitutions": {
            "LaunchConfiguration": _LaunchConfiguration,
            "PathJoinSubstitution": _PathJoinSubstitution,
        },
        "launch_ros": {},
        "launch_ros.actions": {"LifecycleNode": _LifecycleNode, "Node": _Node},
        "launch_ros.substitutions": {"FindPackageShare": _FindPackageShare},
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("human3r_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(launch_module, **given):
    """Declared arguments, and the actions the OpaqueFunction returns for the given values."""
    description = launch_module.generate_launch_description()
    entities = description.args[0]
    declared = {e.name: e for e in entities if isinstance(e, _DeclareLaunchArgument)}
    functions = [e for e in entities if isinstance(e, _OpaqueFunction)]
    assert len(functions) == 1
    context = types.SimpleNamespace(launch_configurations={})
    for name, arg in declared.items():
        if name in given:
            value = given[name]
            if arg.choices is not None and value not in arg.choices:
                raise ValueError(f"{name}:={value!r} not in choices")
        else:
            value = _perform(arg.default_value, context)
        context.launch_configurations[name] = value
    return declared, functions[0].function(context)


def test_launch_file_parses_and_uses_the_real_launch_api():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("launch_ros.actions", "LifecycleNode") in imported
    assert ("launch", "LaunchDescription") in imported
    assert ("launch.actions", "DeclareLaunchArgument") in imported
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_declared_arguments(launch_module):
    declared, _ = _run(launch_module)
    assert set(declared) == EXPECTED_ARGUMENTS
    assert all(arg.kwargs["description"] for arg in declared.values())
    assert set(declared["tf_mode"].choices) >= {"world_to_camera", "camera_to_world", "none"}


def test_defaults_start_only_the_lifecycle_node(launch_module):
    _, actions = _run(launch_module)
    assert len(actions) == 1
    node = actions[0]
    assert isinstance(node, _LifecycleNode)
    assert node.kwargs["package"] == "h3r_ros"
    assert node.kwargs["executable"] == "human3r_node"
    assert node.kwargs["namespace"] == ""
    params_file, overrides = node.kwargs["parameters"]
    assert Path(params_file) == REPO / "config" / "human3r.yaml"
    assert Path(params_file).is_file()
    # Unset arguments must not override the params file.
    assert overrides == {"use_sim_time": False}
    assert dict(node.kwargs["remappings"]) == {"image": "/image_raw", "camera_info": "/camera_info"}


def test_given_arguments_override_parameters_and_start_rviz(launch_module):
    _, actions = _run(
        launch_module,
        namespace="robot",
        image_topic="/cam/color/image_raw/",
        camera_info_topic="/cam/color/camera_info",
        compressed_input="true",
        checkpoint="/data/human3r_672S.pth",
        smplx_dir="/data/smplx",
        device="cuda:0",
        world_frame="map",
        camera_frame="cam_optical",
        tf_mode="none",
        autostart="False",
        use_sim_time="true",
        rviz="true",
    )
    node, rviz = actions
    assert node.kwargs["namespace"] == "robot"
    _, overrides = node.kwargs["parameters"]
    assert overrides == {
        "use_sim_time": True,
        "checkpoint": "/data/human3r_672S.pth",
        "smplx_dir": "/data/smplx",
        "device": "cuda:0",
        "world_frame": "map",
        "camera_frame": "cam_optical",
        "tf_mode": "none",
        "compressed_input": True,
        "autostart": False,
    }
    assert dict(node.kwargs["remappings"]) == {
        "image": "/cam/color/image_raw/",
        "camera_info": "/cam/color/camera_info",
        "image/compressed": "/cam/color/image_raw/compressed",
    }
    assert isinstance(rviz, _Node)
    assert rviz.kwargs["package"] == "rviz2" and rviz.kwargs["namespace"] == "robot"
    arguments = rviz.kwargs["arguments"]
    assert Path(arguments[arguments.index("-d") + 1]) == RVIZ_FILE
    assert arguments[arguments.index("-f") + 1] == "map"
    assert dict(rviz.kwargs["remappings"]) == {"image": "/cam/color/image_raw/"}
    assert rviz.kwargs["parameters"] == [{"use_sim_time": True}]


def test_params_file_matches_the_node(launch_module):
    """The params file applies only under the launched node's name, and a launch argument
    forwarded under a parameter name the node does not declare would be ignored."""
    params = yaml.safe_load((REPO / "config" / "human3r.yaml").read_text())
    _, (node,) = _run(launch_module)
    assert list(params) == ["/**/" + node.kwargs["name"]]  # any namespace
    node_params = params["/**/" + node.kwargs["name"]]["ros__parameters"]
    forwarded = set(launch_module.STRING_OVERRIDES) | set(launch_module.BOOL_OVERRIDES)
    assert forwarded <= set(node_params)


def test_bad_values_are_rejected(launch_module):
    with pytest.raises(ValueError, match="not a boolean"):
        _run(launch_module, rviz="maybe")
    with pytest.raises(ValueError):
        _run(launch_module, tf_mode="map_to_odom")


def test_rviz_config_shows_every_output():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "world"
    topics = {d["Topic"]["Value"]: d for d in manager["Displays"] if "Topic" in d}
    assert "rviz_default_plugins/TF" in {d["Class"] for d in manager["Displays"]}
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
