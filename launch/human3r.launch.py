"""Launch the Human3R lifecycle node, optionally with RViz 2.

    ros2 launch h3r_ros human3r.launch.py \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info rviz:=true

Node parameters come from ``params_file``. The arguments below whose default is
empty keep the file's value unless given; ``use_sim_time`` is always passed.
Input topics are relative by default, so ``namespace`` moves inputs and outputs together.
With ``compressed_input`` (argument or params file) the node reads ``<image_topic>/compressed``
(image_transport's naming) by itself.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "h3r_ros"
NODE_NAME = "human3r_node"  # must match the top-level key of the params file

# Launch arguments forwarded as node parameters when non-empty, by type.
STRING_OVERRIDES = ("checkpoint", "smplx_dir", "device", "world_frame", "camera_frame", "tf_mode")
BOOL_OVERRIDES = ("compressed_input", "autostart")

ARGUMENTS = (
    ("namespace", "", "Namespace of the node (and of RViz, so its relative topics match)."),
    ("params_file", None, "Node parameter file (default: share/h3r_ros/config/human3r.yaml)."),
    ("use_sim_time", "false", "Use /clock (set true when playing a bag with --clock)."),
    ("image_topic", "image", "Input sensor_msgs/Image topic (remapped to 'image'; relative names are in the namespace)."),
    ("camera_info_topic", "camera_info", "Input sensor_msgs/CameraInfo topic (remapped to 'camera_info')."),
    ("compressed_input", "", "true: subscribe to <image_topic>/compressed (CompressedImage) instead."),
    ("checkpoint", "", "Human3R weights (.pth/.safetensors); empty: look in models/."),
    ("smplx_dir", "", "Directory holding SMPLX_NEUTRAL.npz; empty: models/smplx."),
    ("device", "", "auto | cpu | cuda | cuda:N."),
    ("world_frame", "", "Frame of every output (x forward, y left, z up at the first camera pose)."),
    ("camera_frame", "", "Camera optical frame id; empty: the image header's frame_id."),
    ("tf_mode", "", "world_to_camera | camera_to_world | none."),
    ("autostart", "", "Configure and activate the lifecycle node on start."),
    ("rviz", "false", "Start rviz2 with share/h3r_ros/rviz/human3r.rviz."),
)

# Empty keeps the params file value; launch rejects anything else before the node starts.
TF_MODES = ("", "world_to_camera", "camera_to_world", "none")
BOOL_TEXT = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _as_bool(name: str, text: str) -> bool:
    try:
        return BOOL_TEXT[text.strip().lower()]
    except KeyError:
        raise ValueError(f"launch argument {name}:={text!r} is not a boolean (true/false)") from None


def _launch_setup(context):
    """Build the nodes once the arguments are known, so unset ones leave the params file alone."""
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    overrides = {"use_sim_time": _as_bool("use_sim_time", arg["use_sim_time"])}
    overrides.update({name: arg[name] for name in STRING_OVERRIDES if arg[name]})
    overrides.update({name: _as_bool(name, arg[name]) for name in BOOL_OVERRIDES if arg[name]})

    image_topic = arg["image_topic"].rstrip("/") or "image"
    remappings = [("image", image_topic), ("camera_info", arg["camera_info_topic"])]

    actions = [
        LifecycleNode(
            package=PACKAGE,
            executable="human3r_node",
            name=NODE_NAME,
            namespace=arg["namespace"],
            parameters=[arg["params_file"], overrides],
            remappings=remappings,
            output="screen",
            emulate_tty=True,
        )
    ]
    if _as_bool("rviz", arg["rviz"]):
        rviz_args = ["-d", PathJoinSubstitution([FindPackageShare(PACKAGE), "rviz", "human3r.rviz"]).perform(context)]
        if arg["world_frame"]:
            rviz_args += ["-f", arg["world_frame"]]
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
    declared = []
    for name, default, description in ARGUMENTS:
        kwargs = {"choices": list(TF_MODES)} if name == "tf_mode" else {}
        declared.append(
            DeclareLaunchArgument(
                name,
                default_value=default_params if default is None else default,
                description=description,
                **kwargs,
            )
        )
    return LaunchDescription(declared + [OpaqueFunction(function=_launch_setup)])
