"""The node's parameters: one table of names, defaults, descriptions and constraints.

``config/human3r.yaml`` restates the defaults for users; a test keeps the two in sync.
Parameters marked ``live`` take effect on the next processed frame; the others are read
when the node is configured (change them, then cleanup + configure).

Values are checked wherever they come from: ranges by rclpy (descriptors), choices, frame
names and the camera/world pair by ``validate``, which runs for start-up values (params file,
``-p``, launch) as well as for runtime changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

# Light imports only: the launch file reads this table (no torch, no OpenCV here).
DTYPE_CHOICES = ("auto", "float32", "bfloat16")  # engine.precision.DTYPE_CHOICES; a test keeps them equal
DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 MP: above any usual camera, ~50 MB as RGB

TF_MODES = ("world_to_camera", "camera_to_world", "none")
IMAGE_QOS = ("sensor_data", "reliable")
VARIANTS = ("", "672S", "672B", "672L", "896L")
INPUT_SIZE_STEP = 16  # the model's patch size
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_BODY_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CAMERA_NAME = _BODY_PREFIX


_POS_INT_MAX = 2**31 - 1  # rclpy integers are int64; this bound is what a user can mean


@dataclass(frozen=True)
class Spec:
    """How one parameter is declared and checked (its name and default live in ``Settings``)."""

    description: str
    live: bool = False
    choices: tuple[str, ...] = ()
    min_value: float | None = None  # inclusive bounds for numbers
    max_value: float | None = None
    step: int = 1  # integers: the value minus min_value is a multiple of this
    when: str = ""  # when the value is read, if neither per frame (live) nor on configure
    array: bool = False  # a string array (a tuple here)


def _param(default, description: str, **spec):
    return field(default=default, metadata={"spec": Spec(description, **spec)})


@dataclass(frozen=True)
class Settings:
    """Every parameter, declared once: type, default and ``Spec``. An instance is a consistent
    snapshot of all values (the worker reads one per frame)."""

    checkpoint: str = _param(
        "", "Human3R checkpoint (.pth); '' = the first human3r*.pth found in models/ "
        "(next to the package sources or its share directory).")
    variant: str = _param(
        "", "Model variant (672S, 672B, 672L, 896L); '' = read from the checkpoint. "
        "Only needed with random weights.", choices=VARIANTS)
    allow_random_weights: bool = _param(
        False, "Start with random weights when no checkpoint is found (testing "
        "the plumbing only; the outputs are meaningless).")
    smplx_dir: str = _param(
        "", "Folder with SMPLX_NEUTRAL.npz (or its parent holding smplx/); '' = models/. "
        "Without the file: people without bodies (Human.has_body false).")
    device: str = _param(
        "auto", "Inference device: 'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    cpu_threads: int = _param(
        0, "Threads of the model's CPU operations (torch intra-op threads, process-wide); "
        "0 = torch's default, one per core. Lower it to leave cores to other nodes.",
        min_value=0, max_value=1024)
    dtype: str = _param(
        "auto", "Inference precision: 'auto' = bfloat16 where the hardware computes it natively "
        "(CPU with AMX or AVX512-BF16, CUDA compute capability >= 8.0), else float32; "
        "'float32' (reference) or 'bfloat16' to force one.", choices=DTYPE_CHOICES)
    compile: bool = _param(
        False, "torch.compile the model's fixed-shape stages (encoder, DINOv2, dense heads) at "
        "configure, for frames of compile_image_width x compile_image_height (tens of "
        "seconds to minutes); frames of another size compile again when they arrive.")
    compile_image_width: int = _param(
        640, "Width of the camera's frames, px: with compile, the model is compiled "
        "and warmed up for this frame size at configure.", min_value=16,
        max_value=16384)
    compile_image_height: int = _param(
        480, "Height of the camera's frames, px (see compile_image_width).",
        min_value=16, max_value=16384)
    input_size: int = _param(
        512, "Long side of the model input in pixels, a multiple of 16 (the released "
        "models were trained at 512).", min_value=64, max_value=2048, step=INPUT_SIZE_STEP)
    reset_interval: int = _param(
        100, "Re-anchor the recurrent state every N frames, chaining poses so the world "
        "stays continuous (bounds drift on long runs); 0 = never.",
        min_value=0, max_value=_POS_INT_MAX)
    ttt3r: bool = _param(
        True, "Use the TTT3R per-token state update rate (better on long sequences).")
    max_people: int = _param(
        20, "Track at most this many people per frame, the highest detection scores "
        "(bounds the per-frame cost in crowds); 0 = no limit.", min_value=0,
        max_value=_POS_INT_MAX)
    detection_threshold: float = _param(
        0.3, "Head-detection score a person needs (the released models use 0.3; "
        "lower finds more people and more false ones).", min_value=0.0,
        max_value=1.0)
    track_match_threshold: float = _param(
        0.2, "Matching score a person needs to keep an existing track id (the "
        "released models use 0.2; higher switches ids more readily).",
        min_value=0.0, max_value=1.0)
    world_frame: str = _param(
        "world", "Frame of every world-frame output (x forward, y left, z up; anchored at the "
        "camera of the first frame after a reset).")
    camera_frame: str = _param(
        "", "Camera optical frame (x right, y down, z forward) used for TF and camera "
        "outputs; '' = the image header's frame_id.", live=True)
    output_frame: str = _param(
        "", "Frame of 'humans' and the REP-155 bodies: '' = world_frame. Set to a frame of the robot's "
        "TF tree (odom, map, base_link): each image's people are placed there through tf2's "
        "output_frame <- camera at the image stamp, velocities are estimated there (a fixed frame "
        "such as odom removes the robot's own motion), and output_frame -> world_frame is published "
        "on /tf_static at the first frame after start and reset, so clouds, map and markers (kept in "
        "world_frame) land in the robot's tree too. The camera then has its parent in the robot's "
        "tree: tf_mode must be 'none'.")
    output_frame_timeout: float = _param(
        0.1, "Seconds the inference thread waits for the output_frame <- camera transform of an "
        "image; without it by then, that image's people are dropped (counted, warned).", live=True,
        min_value=0.0, max_value=5.0)
    tf_mode: str = _param(
        "world_to_camera", "'world_to_camera' publishes world -> camera while the robot's TF tree "
        "gives the camera no parent (a standalone camera); where it has one (a URDF), the world is "
        "anchored under the root of the camera's tree instead (root -> world on /tf_static, once per "
        "world). 'camera_to_world' publishes camera -> world (the world hangs under the camera); 'none' "
        "publishes no camera TF. None of them is published where world_frame is already a frame of the "
        "tree (the log and /diagnostics say so).", live=True, choices=TF_MODES)
    tf_listen_time: float = _param(
        2.0, "Seconds the node listens to /tf and /tf_static (from configure on) before it publishes "
        "its first camera or world transform, to learn which frames the robot's tree already holds "
        "(/tf_static is latched: a robot's URDF arrives within this time).", min_value=0.0, max_value=60.0)
    publish_body_tf: bool = _param(
        False, "Publish a TF frame per person (REP-155): camera optical frame -> "
        "<body_frame_prefix><track_id>, origin at the pelvis, x forward, y left, "
        "z up. Parented to the camera, so it works in every tf_mode. With publish_hri_bodies "
        "the person's one frame is REP-155's body_b<track_id> instead.", live=True)
    body_frame_prefix: str = _param(
        "body_", "Prefix of the per-person TF frames (REP-155 names them body_<id>: "
        "ids must start with a letter).", live=True)
    publish_hri_bodies: bool = _param(
        False, "Publish the REP-155 (ROS4HRI) body interface: /humans/bodies/tracked "
        "(hri_msgs/IdsList) and per body /humans/bodies/<id>/position and "
        "/velocity plus the TF frame body_<id> (ids b<track_id>). Needs hri_msgs: "
        "configure fails with a clear error without it.")
    track_timeout: float = _param(
        5.0, "Seconds (image stamps) a track may stay unseen, reported as lost, before "
        "it ends: reported once as ended, its markers deleted, its id not matched "
        "again.", live=True, min_value=0.0)
    cameras: tuple[str, ...] = _param(
        (), "Names of the cameras this node serves with one model, e.g. [front, rear]; empty = one "
        "camera on 'image' and 'camera_info'. Each named camera <name> has its own recurrent world, "
        "inputs (parameters <name>.image_topic, default '<name>/image'; <name>.camera_info_topic, "
        "default '<name>/camera_info'; <name>.compressed_input, default compressed_input; "
        "<name>.camera_frame, default '' = the header's frame_id) and outputs under '<name>/', its "
        "world frame being <world_frame>_<name>; with output_frame, the top-level 'humans' fuses "
        "every camera's people.", array=True)
    compressed_input: bool = _param(
        False, "Subscribe to <image>/compressed (sensor_msgs/CompressedImage, jpeg or png; "
        "image_transport's name, following any remap of 'image') instead of image "
        "(sensor_msgs/Image).")
    image_qos: str = _param(
        "sensor_data", "Image and camera_info subscription QoS, depth 1: 'sensor_data' (best effort, "
        "matches any publisher) or 'reliable'.", choices=IMAGE_QOS)
    max_image_age: float = _param(
        0.0, "Skip frames whose stamp is older than this many seconds when inference "
        "would start (counted in diagnostics); 0 = off.", live=True, min_value=0.0)
    max_image_pixels: int = _param(
        DEFAULT_MAX_PIXELS, "Refuse images with more pixels than this (raw, and compressed ones from "
        "their header, before decoding): bounds the memory one message can take.",
        live=True, min_value=1, max_value=_POS_INT_MAX)
    rectify: bool = _param(
        True, "Undistort images whose camera_info carries distortion (plumb_bob or rational_polynomial "
        "with a non-zero coefficient, or equidistant) before the model, as image_proc does: the "
        "outputs' intrinsics and pixel coordinates then refer to the rectified image (camera matrix "
        "P). Until a camera_info arrives, frames are used as they are. Set false on an already "
        "rectified topic (image_rect).", live=True)
    stamp_jump_threshold: float = _param(
        1.0, "An image stamped earlier than the previous one by less than this many "
        "seconds is dropped as out of order (counted); a larger backwards jump "
        "(bag loop, clock reset) resets the reconstruction.", live=True,
        min_value=0.0)
    publish_cloud: bool = _param(
        True, "Publish the current frame's point cloud on 'cloud'.", live=True)
    publish_map: bool = _param(
        True, "Accumulate a voxel map and publish it on 'map_cloud' (transient local).", live=True)
    publish_markers: bool = _param(
        True, "Publish skeleton markers on 'markers'.", live=True)
    publish_mesh: bool = _param(
        False, "Add SMPL-X meshes (TRIANGLE_LIST) to 'markers' every mesh_publish_period.",
        live=True)
    publish_path: bool = _param(
        True, "Publish the camera trajectory on 'camera_path'.", live=True)
    publish_depth: bool = _param(
        True, "Publish the depth as a camera pair: 'depth/image' (z of the camera-frame "
        "points in metres, 32FC1, model-input resolution) and 'depth/camera_info' "
        "(the model's intrinsics; its roi places the depth image in the source image "
        "resized to the info's width x height).", live=True)
    publish_camera_info: bool = _param(
        True, "Publish the model's estimated intrinsics for the source image's "
        "resolution on 'estimated_camera_info'.", live=True)
    publish_vertices: bool = _param(
        False, "Fill Human.vertices (10475 SMPL-X vertices per person) in 'humans'.",
        live=True)
    cloud_conf_threshold: float = _param(
        2.0, "Keep points whose confidence (>= 1) exceeds this.", live=True,
        min_value=0.0)
    cloud_stride: int = _param(
        2, "Keep every N-th pixel in each image direction for 'cloud' and the map.",
        live=True, min_value=1, max_value=64)
    cloud_max_points: int = _param(
        50000, "Upper bound on points in 'cloud' (evenly subsampled beyond it).", live=True,
        min_value=1, max_value=_POS_INT_MAX)
    map_voxel_size: float = _param(
        0.05, "Voxel edge of the accumulated map in metres.", min_value=0.001)
    map_max_points: int = _param(
        500000, "Upper bound on map points; the oldest voxels go first.",
        min_value=1, max_value=_POS_INT_MAX)
    map_publish_period: float = _param(
        1.0, "Seconds between map publications (only when it changed).", live=True,
        min_value=0.0)
    map_exclude_humans: bool = _param(
        True, "Leave pixels the model marks as human out of the map (moving people "
        "would smear it).", live=True)
    mesh_publish_period: float = _param(
        1.0, "Seconds between mesh marker updates (meshes are large).", live=True,
        min_value=0.0)
    path_max_poses: int = _param(
        10000, "Upper bound on poses kept in 'camera_path' (oldest dropped).", live=True,
        min_value=1, max_value=_POS_INT_MAX)
    diagnostics_period: float = _param(
        1.0, "Seconds between /diagnostics messages.", min_value=0.05)
    autostart: bool = _param(
        True, "Configure and activate at start-up.", when="Read by the executable at start-up.")


SPECS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in fields(Settings)}
LIVE_PARAMETERS = frozenset(name for name, spec in SPECS.items() if spec.live)
DEFAULTS = Settings()


def _descriptor(name: str, spec: Spec, default) -> ParameterDescriptor:
    when = spec.when or ("Takes effect on the next frame." if spec.live else "Read when the node is configured.")
    descriptor = ParameterDescriptor(name=name, description=f"{spec.description} {when}")
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.min_value is not None and not isinstance(default, bool):
        if isinstance(default, int):
            upper = _POS_INT_MAX if spec.max_value is None else int(spec.max_value)
            descriptor.integer_range = [IntegerRange(from_value=int(spec.min_value), to_value=upper, step=spec.step)]
        else:
            upper = float("inf") if spec.max_value is None else float(spec.max_value)
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(spec.min_value), to_value=upper, step=0.0)
            ]
    return descriptor


@dataclass(frozen=True)
class CameraSettings:
    """One camera's inputs and frames (parameters ``<name>.*``; ``name`` '' for the one camera
    of a node without ``cameras``, on 'image' and 'camera_info')."""

    name: str
    image_topic: str
    camera_info_topic: str
    compressed_input: bool
    camera_frame: str  # '' = the image header's frame_id

    def world_frame(self, world_frame: str) -> str:
        """A world of its own per camera: two worlds never share a name."""
        return f"{world_frame}_{self.name}" if self.name else world_frame


def _camera_defaults(name: str, settings: Settings) -> dict[str, object]:
    return {"image_topic": f"{name}/image", "camera_info_topic": f"{name}/camera_info",
            "compressed_input": settings.compressed_input, "camera_frame": ""}


_CAMERA_DESCRIPTIONS = {
    "image_topic": "This camera's sensor_msgs/Image topic (relative names are in the node's namespace).",
    "camera_info_topic": "This camera's sensor_msgs/CameraInfo topic.",
    "compressed_input": "Subscribe to <image_topic>/compressed instead (jpeg or png).",
    "camera_frame": "This camera's optical frame; '' = the image header's frame_id.",
}


def declare_cameras(node, settings: Settings) -> None:
    """Declare ``<name>.image_topic`` etc. for every camera in ``settings.cameras`` (once)."""
    for name in settings.cameras:
        for key, default in _camera_defaults(name, settings).items():
            full = f"{name}.{key}"
            if not node.has_parameter(full):
                node.declare_parameter(full, default, ParameterDescriptor(
                    name=full, description=f"{_CAMERA_DESCRIPTIONS[key]} Read when the node is configured."))


def read_cameras(node, settings: Settings) -> list[CameraSettings]:
    """Every camera of ``settings`` with its parameters (declared by ``declare_cameras``)."""
    if not settings.cameras:
        return [CameraSettings("", "image", "camera_info", settings.compressed_input, "")]
    return [CameraSettings(name, **{key: node.get_parameter(f"{name}.{key}").value
                                    for key in _camera_defaults(name, settings)})
            for name in settings.cameras]


def camera_problems(cameras: list[CameraSettings]) -> list[str]:
    """What configure refuses in the cameras' parameters."""
    problems = []
    for camera in cameras:
        if not camera.name:
            continue
        if camera.camera_frame:
            reason = valid_frame_name(camera.camera_frame)
            if reason:
                problems.append(f"{camera.name}.camera_frame: {reason}")
        for key in ("image_topic", "camera_info_topic"):
            if not getattr(camera, key):
                problems.append(f"{camera.name}.{key} must not be empty")
    frames = [c.camera_frame for c in cameras if c.camera_frame]
    if len(set(frames)) != len(frames):
        problems.append(f"two cameras share a camera_frame ({', '.join(frames)})")
    topics = [c.image_topic for c in cameras]
    if len(set(topics)) != len(topics):
        problems.append(f"two cameras share an image_topic ({', '.join(topics)})")
    return problems


def declare(node) -> dict[str, str]:
    """Declare every parameter on ``node`` with its default and descriptor.

    A start-up value (params file, ``-p``, launch) that fails its checks is not applied: the
    parameter keeps its default and ``{name: reason}`` is returned, so the node can start,
    report it, and refuse to configure until it is fixed.
    """
    node.add_on_set_parameters_callback(lambda params: check(params, lambda name: _value_or_none(node, name)))
    errors = {}
    for f in fields(Settings):
        default = getattr(DEFAULTS, f.name)
        descriptor = _descriptor(f.name, SPECS[f.name], default)
        value = default
        if SPECS[f.name].array:
            # An empty list has no type of its own (rclpy takes it for a byte array): typed by
            # the checks instead, so that a string array can replace it.
            value, descriptor.dynamic_typing = list(default), True
        try:
            node.declare_parameter(f.name, value, descriptor)
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            errors[f.name] = str(exc)
            node.declare_parameter(f.name, value, descriptor, ignore_override=True)
    return errors


def _value_or_none(node, name: str):
    return node.get_parameter(name).value if node.has_parameter(name) else None


def read(node) -> Settings:
    """Current values of all parameters (string arrays as tuples; an empty list in a params
    file, which rcl passes on as no value, as an empty one)."""
    values = {f.name: node.get_parameter(f.name).value for f in fields(Settings)}
    return Settings(**{name: tuple(value or ()) if SPECS[name].array else value for name, value in values.items()})


def valid_frame_name(name: str) -> str:
    """'' if ``name`` can be a TF frame id, else why not."""
    if not name:
        return "must not be empty"
    if any(c.isspace() for c in name):
        return f"{name!r} contains whitespace"
    if name.startswith("/"):
        return f"{name!r} starts with '/' (tf2 frame ids have no leading slash)"
    return ""


def validate(name: str, value, current) -> str:
    """'' if ``value`` is acceptable for parameter ``name``, else the reason. ``current(name)``
    gives the value of another parameter (for checks that involve two)."""
    spec = SPECS.get(name)
    if spec is None:
        return ""
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(repr(c) for c in spec.choices)}, got {value!r}"
    if name == "device" and isinstance(value, str) and not _DEVICE.fullmatch(value):
        return f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}"
    if name in ("world_frame", "camera_frame") and isinstance(value, str):
        if name == "camera_frame" and value == "":
            return ""  # the image header's frame_id
        reason = valid_frame_name(value)
        if reason:
            return f"{name}: {reason}"
        other = "camera_frame" if name == "world_frame" else "world_frame"
        if value == current(other):
            return f"{name} must differ from {other} (both {value!r})"
    if name == "output_frame" and isinstance(value, str) and value:
        reason = valid_frame_name(value)
        if reason:
            return f"output_frame: {reason}"
        if value in (current("world_frame"), current("camera_frame")):
            return f"output_frame must differ from world_frame and camera_frame, got {value!r}"
    if name in ("output_frame", "tf_mode") and current("output_frame") and current("tf_mode") not in ("none", None):
        return ("output_frame places the world in the robot's TF tree (output_frame -> world_frame) and "
                "the camera's pose comes from that tree: set tf_mode to 'none'")
    if name == "cameras" and value is not None:
        if not isinstance(value, (list, tuple)):
            return f"cameras must be a list of names such as [front, rear], got {value!r}"
        names = list(value)
        bad = [n for n in names if not isinstance(n, str) or not _CAMERA_NAME.fullmatch(n)]
        if bad:
            return (f"cameras must be names of letters, digits and '_' starting with a letter (they name "
                    f"topics, parameters and frames), got {bad!r}")
        if len(set(names)) != len(names):
            return f"cameras must be distinct, got {names!r}"
    if name == "body_frame_prefix" and isinstance(value, str) and not _BODY_PREFIX.fullmatch(value):
        return (f"body_frame_prefix must start with a letter and hold only letters, digits and '_' "
                f"(frames are named <prefix><track id>), got {value!r}")
    return ""


def check(parameters, current) -> SetParametersResult:
    """on-set-parameters callback: every value in ``parameters`` must pass ``validate``
    (values set together are checked against each other)."""
    pending = {p.name: p.value for p in parameters}

    def lookup(name):
        return pending[name] if name in pending else current(name)

    for parameter in parameters:
        reason = validate(parameter.name, parameter.value, lookup)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
    return SetParametersResult(successful=True)


def check_settings(settings: Settings) -> list[str]:
    """Every problem of a complete snapshot (what configure refuses)."""
    values = {f.name: getattr(settings, f.name) for f in fields(Settings)}
    problems = [validate(name, value, values.__getitem__) for name, value in values.items()]
    return [p for p in problems if p]


def documented_defaults() -> dict[str, tuple[object, str]]:
    """name -> (default, description), for documentation and the yaml consistency test."""
    return {f.name: (getattr(DEFAULTS, f.name), SPECS[f.name].description) for f in fields(Settings)}
