"""Launch the Human3R lifecycle node, optionally with RViz 2.

    ros2 launch h3r_ros human3r.launch.py \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info rviz:=true

Node parameters come from ``params_file``. Every node parameter is also a launch argument
(``input_size:=384``), converted to the parameter's type (that of its default); left empty it
keeps the file's value. ``use_sim_time`` is always passed. A command-line argument that is
neither one of these nor a parameter fails the launch with the valid names, so a typo cannot
go unnoticed. (Included from another launch file, this file also sees that file's
command-line arguments: include it in a ``GroupAction(forwarding=False, ...)`` that passes on
only its own.) Input topics are relative by default, so ``namespace`` moves inputs and
outputs together. With ``compressed_input`` the node reads ``<image_topic>/compressed``
(image_transport's naming) by itself.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from h3r_ros.ros.parameters import documented_defaults

PACKAGE = "h3r_ros"
NODE_NAME = "human3r_node"  # must match the top-level key of the params file

# The launch arguments that are not node parameters.
ARGUMENTS = (
    ("namespace", "", "Namespace of the node (and of RViz, so its relative topics match)."),
    ("params_file", None, "Node parameter file (default: share/h3r_ros/config/human3r.yaml); a bare name such as "
     "two_cameras.yaml is one of share/h3r_ros/config."),
    ("use_sim_time", "false", "Use /clock (set true when playing a bag with --clock)."),
    ("image_topic", "image", "Input sensor_msgs/Image topic (remapped to 'image'; relative names are in the namespace)."),
    ("camera_info_topic", "camera_info", "Input sensor_msgs/CameraInfo topic (remapped to 'camera_info')."),
    ("rviz", "false", "Start rviz2 with share/h3r_ros/rviz/human3r.rviz."),
)
# What `ros2 launch` adds to the arguments itself (its --launch-prefix options).
LAUNCH_OPTIONS = ("launch-prefix", "launch-prefix-filter")

# Empty keeps the params file value; launch rejects anything else before the node starts.
TF_MODES = ("", "world_to_camera", "camera_to_world", "none")
BOOL_TEXT = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _as_bool(name: str, text: str) -> bool:
    try:
        return BOOL_TEXT[text.strip().lower()]
    except KeyError:
        raise ValueError(f"launch argument {name}:={text!r} is not a boolean (true/false)") from None


def parameter_value(name: str, text: str, default):
    """A parameter's launch argument as the parameter's type (bool, int, float, string, or a
    list of names written [a,b])."""
    if isinstance(default, bool):
        return _as_bool(name, text)
    if isinstance(default, tuple):
        names = [item.strip() for item in text.strip().removeprefix("[").removesuffix("]").split(",")]
        if not text.strip().startswith("[") or not text.strip().endswith("]") or "" in names and names != [""]:
            raise ValueError(f"launch argument {name}:={text!r} is not a list of names such as [front,rear]")
        return [n for n in names if n]
    for kind, what in ((int, "an integer"), (float, "a number")):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(f"launch argument {name}:={text!r} is not {what} (parameter {name}, "
                                 f"default {default!r})") from None
    return text


def unknown_arguments(context, known) -> list[str]:
    """Names given on the command line (``context.argv``) that reached this file's launch
    configurations but are neither launch arguments nor parameters."""
    given = {item.split(":=", 1)[0] for item in context.argv if ":=" in item}
    return sorted(name for name in given & set(context.launch_configurations)
                  if name not in known and name not in LAUNCH_OPTIONS)


def _params_file(name: str, context) -> str:
    """A bare file name that is not a file here is one of the package's own configs
    (``params_file:=two_cameras.yaml``)."""
    if os.sep in name or os.path.exists(name):
        return name
    shipped = os.path.join(FindPackageShare(PACKAGE).perform(context), "config", name)
    return shipped if os.path.isfile(shipped) else name


def _launch_setup(context):
    """Build the nodes once the arguments are known, so unset ones leave the params file alone."""
    parameters = documented_defaults()
    unknown = unknown_arguments(context, {name for name, _, _ in ARGUMENTS} | set(parameters))
    if unknown:
        valid = ", ".join([name for name, _, _ in ARGUMENTS] + list(parameters))
        raise ValueError(f"unknown launch argument(s) {', '.join(unknown)}: neither a launch argument nor a "
                         f"parameter of {NODE_NAME}. Valid names: {valid}")
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    overrides = {"use_sim_time": _as_bool("use_sim_time", arg["use_sim_time"])}
    for name, (default, _) in parameters.items():
        text = LaunchConfiguration(name).perform(context)
        value = parameter_value(name, text, default) if text else None
        if value not in (None, []):  # an empty list is the default: a parameter has no empty-list type
            overrides[name] = value

    image_topic = arg["image_topic"].rstrip("/") or "image"
    remappings = [("image", image_topic), ("camera_info", arg["camera_info_topic"])]

    actions = [
        LifecycleNode(
            package=PACKAGE,
            executable="human3r_node",
            name=NODE_NAME,
            namespace=arg["namespace"],
            parameters=[_params_file(arg["params_file"], context), overrides],
            remappings=remappings,
            output="screen",
            emulate_tty=True,
        )
    ]
    if _as_bool("rviz", arg["rviz"]):
        rviz_args = ["-d", PathJoinSubstitution([FindPackageShare(PACKAGE), "rviz", "human3r.rviz"]).perform(context)]
        if "world_frame" in overrides:
            rviz_args += ["-f", overrides["world_frame"]]
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                namespace=arg["namespace"],
                arguments=rviz_args,
                # The config's image display subscribes to the relative topic 'image'.
                remappings=[("image", image_topic)],
                parameters=[{"use_sim_time": overrides["use_sim_time"]}],
                output="screen",
            )
        )
    return actions


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "human3r.yaml"])
    declared = [
        DeclareLaunchArgument(name, default_value=default_params if default is None else default,
                              description=description)
        for name, default, description in ARGUMENTS
    ]
    for name, (default, description) in documented_defaults().items():
        kwargs = {"choices": list(TF_MODES)} if name == "tf_mode" else {}
        declared.append(DeclareLaunchArgument(
            name, default_value="", description=f"{description} Unset: the params file's value (node default {default!r}).",
            **kwargs))
    return LaunchDescription(declared + [OpaqueFunction(function=_launch_setup)])
