"""Engine results (numpy) -> ROS messages. Pure functions: no node, no clock, no I/O.

Frames: the engine's world frame already has ROS axes (x forward, y left, z up); camera
quantities are in the OpenCV optical frame (x right, y down, z forward). SMPL-X body axes
(x left, y up, z forward of the body) are converted here for the pelvis orientation.
"""

from __future__ import annotations

import array
import math

import numpy as np
from geometry_msgs.msg import Point, Point32, Pose, PoseStamped, Quaternion, TransformStamped, Vector3
from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from h3r_ros.engine.track_motion import NEW, TRACKED
from h3r_ros.msg import Human, HumanArray

NUM_JOINTS = 55

# Columns are the ROS body axes (x forward, y left, z up) written in SMPL-X body axes
# (x left, y up, z forward): R_world_body_ros = R_world_body_smplx @ ROS_FROM_SMPLX_BODY.
ROS_FROM_SMPLX_BODY = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

# XYZ + packed RGB, the layout RViz and PCL read as "rgb" (REP-conventional point_step 16).
CLOUD_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
]
CLOUD_POINT_STEP = 16


def quaternion_from_matrix(rot: np.ndarray) -> tuple[float, float, float, float]:
    """3x3 rotation -> unit quaternion (x, y, z, w) with w >= 0 (Shepperd's method)."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    # Pick the largest of w, x, y, z first so the division is well conditioned.
    if trace > max(m[0, 0], m[1, 1], m[2, 2]):
        s = 2.0 * np.sqrt(1.0 + trace)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif m[1, 1] >= m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s)
    q = np.array(q)
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def transform_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> rigid 4x4 (the quaternion normalised first)."""
    r, t = transform.rotation, transform.translation
    q = np.array([r.w, r.x, r.y, r.z], dtype=np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    matrix = np.eye(4)
    matrix[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    matrix[:3, 3] = [t.x, t.y, t.z]
    return matrix


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    rot, trans = transform[:3, :3], transform[:3, 3]
    out = np.eye(4)
    out[:3, :3] = rot.T
    out[:3, 3] = -rot.T @ trans
    return out


def _point(p) -> Point:
    return Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def pose_msg(rot: np.ndarray, position) -> Pose:
    x, y, z, w = quaternion_from_matrix(rot)
    return Pose(position=_point(position), orientation=Quaternion(x=x, y=y, z=z, w=w))


def transform_msg(transform: np.ndarray, parent: str, child: str, stamp) -> TransformStamped:
    """TransformStamped giving the pose of ``child`` in ``parent`` (= maps child coords to parent)."""
    x, y, z, w = quaternion_from_matrix(transform[:3, :3])
    msg = TransformStamped(header=Header(stamp=stamp, frame_id=parent), child_frame_id=child)
    t = transform[:3, 3]
    msg.transform.translation = Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2]))
    msg.transform.rotation = Quaternion(x=x, y=y, z=z, w=w)
    return msg


def camera_transform(cam_to_world: np.ndarray, world_frame: str, camera_frame: str, mode: str, stamp):
    """The TF for one frame: world -> camera, camera -> world (inverse), or None for 'none'."""
    if mode == "world_to_camera":
        return transform_msg(cam_to_world, world_frame, camera_frame, stamp)
    if mode == "camera_to_world":
        return transform_msg(invert_transform(cam_to_world), camera_frame, world_frame, stamp)
    return None


def body_to_world(person) -> np.ndarray:
    """4x4 pose of the person's ROS body frame (origin at the pelvis, x forward, y left, z up)
    in the world frame."""
    transform = np.eye(4)
    transform[:3, :3] = np.asarray(person.pelvis_rotation_world, dtype=np.float64) @ ROS_FROM_SMPLX_BODY
    transform[:3, 3] = np.asarray(person.joints_world, dtype=np.float64)[0]
    return transform


def body_transforms(result, camera_frame: str, prefix: str, stamp) -> list[TransformStamped]:
    """REP-155 body frames: ``camera_frame -> <prefix><track_id>`` for every person with a
    body (none without a body model: there is no pelvis). Parented to the sensor frame (not
    the world) so they hold in every tf_mode, including 'none'."""
    world_to_cam = invert_transform(np.asarray(result.cam_to_world, dtype=np.float64))
    return [
        transform_msg(world_to_cam @ body_to_world(person), camera_frame, f"{prefix}{person.track_id}", stamp)
        for person in result.people
        if person.joints_world is not None
    ]


_NAN_POSE = Pose(position=Point(x=math.nan, y=math.nan, z=math.nan),
                 orientation=Quaternion(x=math.nan, y=math.nan, z=math.nan, w=math.nan))


def human_msg(person, with_vertices: bool, track=None, now: float = 0.0, sources=()) -> Human:
    """One engine Person -> Human, every pose in the world frame. A person without a body
    (no body model) gets has_body false, no joints or vertices, and NaN pelvis and transl.
    ``track`` (a TrackInfo) adds its id, the track state, ages at ``now`` (s) and velocity
    (without it: a new track with the person's id); ``sources``: (camera name, camera's
    track id) of the cameras that see the person."""
    has_body = person.joints_world is not None
    msg = Human(
        track_id=int(person.track_id if track is None else track.track_id),
        source_cameras=[camera for camera, _ in sources],
        source_track_ids=[int(track_id) for _, track_id in sources],
        score=float(person.score),
        has_body=has_body,
        head=_point(np.asarray(person.head_world, dtype=np.float64)),
    )
    if track is not None:
        msg.track_state = int(track.state)
        msg.time_since_first_seen, msg.time_since_last_seen = track.ages(now)
        v = track.velocity
        msg.velocity = Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))
        msg.velocity_std = float(track.velocity_std)
    else:
        msg.velocity = Vector3(x=math.nan, y=math.nan, z=math.nan)
        msg.velocity_std = math.nan
    msg.betas = np.asarray(person.betas, dtype=np.float32).reshape(10)
    msg.expression = np.asarray(person.expression, dtype=np.float32).reshape(10)
    msg.full_pose = np.asarray(person.full_pose_world, dtype=np.float32).reshape(3 * NUM_JOINTS)
    if not has_body:
        msg.pelvis = _NAN_POSE
        msg.transl = np.full(3, np.nan, dtype=np.float32)
        return msg
    joints = np.asarray(person.joints_world, dtype=np.float64)
    pelvis = body_to_world(person)
    msg.pelvis = pose_msg(pelvis[:3, :3], pelvis[:3, 3])
    msg.joints = [_point(j) for j in joints[:NUM_JOINTS]]
    msg.transl = np.asarray(person.transl_world, dtype=np.float32).reshape(3)
    if with_vertices and (track is None or track.state in (NEW, TRACKED)):
        if person.vertices_world is None:
            raise ValueError("vertices requested but the engine did not compute them")
        msg.vertices = [Point32(x=float(v[0]), y=float(v[1]), z=float(v[2])) for v in person.vertices_world.tolist()]
    return msg


def humans_msg(result, header: Header, camera_frame: str, with_vertices: bool, tracks=None,
               now: float = 0.0, camera_name: str = "") -> HumanArray:
    """FrameResult -> HumanArray in ``header.frame_id`` (the world frame), from the camera
    ``camera_name`` ("" in a one-camera node), the source of every person it sees. ``tracks``:
    the frame's TrackInfo list (seen, lost, then ended tracks; each payload is the track's
    latest Person); without it, this frame's people as new tracks."""
    cam_to_world = np.asarray(result.cam_to_world, dtype=np.float64)
    if tracks is None:
        humans = [human_msg(p, with_vertices, sources=[(camera_name, p.track_id)]) for p in result.people]
    else:
        humans = [human_msg(t.payload, with_vertices, t, now,
                            [(camera_name, t.track_id)] if t.state in (NEW, TRACKED) else []) for t in tracks]
    return HumanArray(
        header=header,
        camera_name=camera_name,
        camera_frame_id=camera_frame,
        camera_pose=pose_msg(cam_to_world[:3, :3], cam_to_world[:3, 3]),
        reset=bool(result.reset),
        humans=humans,
    )


def fused_humans_msg(header: Header, tracks, with_vertices: bool, now: float) -> HumanArray:
    """Fused tracks (``Fusion.update``: current then ended FusedTracks) -> the HumanArray of a
    round in ``header.frame_id`` (output_frame), one entry per person: the fused id, the best
    view's person, the fused velocity and the sources. No camera of its own: its camera
    fields are empty and NaN."""
    return HumanArray(
        header=header,
        camera_pose=_NAN_POSE,
        humans=[human_msg(t.info.payload, with_vertices, t.info, now, t.sources) for t in tracks],
    )


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) uint32 r << 16 | g << 8 | b."""
    c = colors.astype(np.uint32)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def cloud_msg(points: np.ndarray, colors: np.ndarray, header: Header) -> PointCloud2:
    """Unorganised XYZRGB PointCloud2 (x, y, z float32 at 0/4/8, packed rgb as float32 at 12)."""
    n = points.shape[0]
    buffer = np.empty((n, 4), dtype=np.float32)
    buffer[:, :3] = points
    buffer[:, 3] = pack_rgb(colors).view(np.float32)
    return PointCloud2(
        header=header,
        height=1,
        width=n,
        fields=CLOUD_FIELDS,
        is_bigendian=False,
        point_step=CLOUD_POINT_STEP,
        row_step=CLOUD_POINT_STEP * n,
        data=array.array("B", buffer.tobytes()),
        is_dense=bool(np.isfinite(points).all()),
    )


def depth_msg(points_cam: np.ndarray, header: Header) -> Image:
    """32FC1 depth (z along the optical axis, metres) at model-input resolution."""
    depth = np.ascontiguousarray(points_cam[..., 2], dtype=np.float32)
    height, width = depth.shape
    return Image(
        header=header,
        height=height,
        width=width,
        encoding="32FC1",
        is_bigendian=False,
        step=4 * width,
        data=array.array("B", depth.tobytes()),
    )


def camera_info_msg(K: np.ndarray, size_hw: tuple[int, int], header: Header) -> CameraInfo:
    """Pinhole CameraInfo (no distortion) for an image of ``size_hw`` with intrinsics ``K``."""
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(
        header=header,
        height=int(size_hw[0]),
        width=int(size_hw[1]),
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=K.reshape(9).tolist(),
        r=np.eye(3).reshape(9).tolist(),
        p=P.reshape(12).tolist(),
    )


def intrinsics_in_resized(K: np.ndarray, crop_box) -> np.ndarray:
    """Model-input intrinsics -> those of the whole resized frame the input was cropped from."""
    out = np.array(K, dtype=np.float64)
    out[0, 2] += crop_box[0]
    out[1, 2] += crop_box[1]
    return out


def intrinsics_in_source(K_resized: np.ndarray, resized_wh, source_wh) -> np.ndarray:
    """Resized-frame intrinsics -> source-image intrinsics. The resize maps pixel centres as
    ``x_resized + 0.5 = (x_source + 0.5) * W' / W`` (per axis), so K scales with a half-pixel
    shift of the principal point."""
    sx = resized_wh[0] / source_wh[0]
    sy = resized_wh[1] / source_wh[1]
    out = np.array(K_resized, dtype=np.float64)
    out[0, 0] /= sx
    out[1, 1] /= sy
    out[0, 2] = (out[0, 2] + 0.5) / sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) / sy - 0.5
    return out


def depth_camera_info_msg(K: np.ndarray, crop_box, resized_wh, header: Header) -> CameraInfo:
    """CameraInfo of 'depth/image' in the standard roi form: the calibrated image is the source
    frame resized to ``resized_wh`` (width x height here, K of that frame), and the depth image is
    its ``roi`` (the model-input crop, binning 1). A consumer honouring roi (image_geometry) gets
    the model-input intrinsics; ``x_source = (x_resized + 0.5) * source_width / width - 0.5``
    (same for y) brings a resized-frame pixel onto the source image."""
    left, top, right, bottom = (int(v) for v in crop_box)
    msg = camera_info_msg(intrinsics_in_resized(K, crop_box), (int(resized_wh[1]), int(resized_wh[0])), header)
    msg.roi.x_offset, msg.roi.y_offset = left, top
    msg.roi.width, msg.roi.height = right - left, bottom - top
    msg.roi.do_rectify = False
    msg.binning_x = msg.binning_y = 1
    return msg


def path_pose(cam_to_world: np.ndarray, header: Header) -> PoseStamped:
    return PoseStamped(header=header, pose=pose_msg(cam_to_world[:3, :3], cam_to_world[:3, 3]))


def path_msg(poses, header: Header) -> Path:
    return Path(header=header, poses=list(poses))
