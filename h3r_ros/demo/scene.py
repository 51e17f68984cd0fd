"""A procedurally rendered input sequence: a textured room with walking figures.

The demo needs camera frames that exist on a fresh machine without downloads. This
ray-casts (numpy) a furnished-looking room from a slowly moving, slightly turning camera,
with a few person-like figures made of ellipsoids. Scene coordinates are the first
camera's OpenCV axes (x right, y down, z forward, metres), so the rendered camera poses
are exactly what a perfect reconstruction would return.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CAMERA_HEIGHT = 1.4  # metres above the floor; the floor is the plane y = CAMERA_HEIGHT
ROOM_HEIGHT = 2.8
ROOM_HALF_WIDTH = 3.0
BACK_WALL_Z = 7.0
FRONT_WALL_Z = -2.0
HORIZONTAL_FOV_DEG = 65.0
LIGHT = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])  # towards the light

# Body parts of a 1.7 m figure: (centre above the floor, lateral offset, radii x/y/z, colour key).
BODY_PARTS = (
    (1.58, 0.00, (0.10, 0.12, 0.10), "skin"),  # head
    (1.22, 0.00, (0.19, 0.28, 0.12), "shirt"),  # torso
    (0.92, 0.00, (0.17, 0.12, 0.11), "pants"),  # hips
    (0.45, -0.09, (0.075, 0.44, 0.075), "pants"),  # right leg
    (0.45, 0.09, (0.075, 0.44, 0.075), "pants"),  # left leg
    (1.15, -0.26, (0.055, 0.32, 0.055), "shirt"),  # right arm
    (1.15, 0.26, (0.055, 0.32, 0.055), "shirt"),  # left arm
)
LEG_PARTS = (3, 4)
ARM_PARTS = (5, 6)


@dataclass(frozen=True)
class Figure:
    x: float  # start position on the floor (scene metres)
    z: float
    vx: float  # walking velocity, metres per second
    vz: float
    colours: dict


FIGURES = (
    Figure(-1.3, 3.6, 0.25, 0.0, {"skin": (224, 172, 140), "shirt": (200, 40, 40), "pants": (40, 50, 90)}),
    Figure(0.5, 4.8, 0.0, -0.2, {"skin": (150, 100, 70), "shirt": (40, 150, 70), "pants": (70, 60, 50)}),
    Figure(1.7, 3.0, -0.15, 0.1, {"skin": (236, 200, 170), "shirt": (240, 200, 40), "pants": (30, 30, 30)}),
)


@dataclass(frozen=True)
class SyntheticSequence:
    """``frames`` views at ``fps`` of the synthetic room, ``width`` x ``height`` RGB."""

    frames: int = 12
    width: int = 512
    height: int = 288
    fps: float = 10.0
    supersample: int = 2  # rays per pixel side; averaged down to hide aliasing

    @property
    def K(self) -> np.ndarray:
        f = self.width / (2.0 * np.tan(np.radians(HORIZONTAL_FOV_DEG) / 2.0))
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def cam_to_world(self, i: int) -> np.ndarray:
        """Camera pose of frame ``i`` (4x4, OpenCV axes): a sideways dolly with a slow pan."""
        s = i / max(self.frames - 1, 1)
        yaw = np.radians(-6.0 + 12.0 * s)
        pitch = np.radians(-8.0)  # looking slightly down at the floor
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        rot_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        rot_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
        pose = np.eye(4)
        pose[:3, :3] = rot_yaw @ rot_pitch
        pose[:3, 3] = (-0.5 + 1.0 * s, 0.0, 0.4 * s)
        return pose

    def __len__(self) -> int:
        return self.frames

    def __iter__(self):
        for i in range(self.frames):
            yield self.render(i)

    def render(self, i: int) -> np.ndarray:
        """Frame ``i`` as an (height, width, 3) uint8 RGB image."""
        ss = self.supersample
        w, h = self.width * ss, self.height * ss
        K = self.K
        u, v = np.meshgrid((np.arange(w) + 0.5) / ss, (np.arange(h) + 0.5) / ss)
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        pose = self.cam_to_world(i)
        dirs = (rays.reshape(-1, 3) @ pose[:3, :3].T).astype(np.float32)
        origin = pose[:3, 3].astype(np.float32)

        depth = np.full(len(dirs), np.inf, np.float32)
        colour = np.zeros((len(dirs), 3), np.float32)
        normal = np.zeros((len(dirs), 3), np.float32)
        for plane in _room_planes():
            _hit_plane(origin, dirs, depth, colour, normal, *plane)
        t = i / self.fps
        for figure in FIGURES:
            for centre, radii, rgb in _figure_parts(figure, t):
                _hit_ellipsoid(origin, dirs, depth, colour, normal, centre, radii, rgb)

        shade = 0.45 + 0.55 * np.clip(normal @ LIGHT, 0.0, 1.0)
        fog = np.exp(-0.03 * np.minimum(depth, 20.0))  # slight falloff gives depth cues
        image = (colour * (shade * fog)[:, None]).reshape(h, w, 3)
        image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return np.clip(image, 0, 255).astype(np.uint8)


def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (a, b)."""
    x = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return x - np.floor(x)


def _floor_texture(p: np.ndarray) -> np.ndarray:
    """Wooden tiles: per-tile tint, a grain pattern and dark joints."""
    a, b = p[:, 0] / 0.6, p[:, 2] / 0.6
    ia, ib = np.floor(a), np.floor(b)
    tint = _hash(ia, ib)[:, None]
    grain = 0.5 + 0.5 * np.sin(p[:, 2] * 40.0 + 3.0 * np.sin(p[:, 0] * 7.0 + ia))[:, None]
    base = np.array([150, 105, 60]) * (0.75 + 0.3 * tint) + 18.0 * grain
    joint = (np.minimum(a - ia, b - ib) < 0.04)[:, None]
    return np.where(joint, 60.0, base)


def _wall_texture(p: np.ndarray, axis_u: int, base: tuple) -> np.ndarray:
    """Painted wall with a band of framed pictures and a skirting board."""
    u, height = p[:, axis_u], CAMERA_HEIGHT - p[:, 1]
    out = np.broadcast_to(np.array(base, np.float32), (len(p), 3)).copy()
    out *= (0.93 + 0.07 * _hash(np.floor(u * 8), np.floor(height * 8)))[:, None]
    cell = np.floor(u / 1.5)
    fu = u / 1.5 - cell
    in_picture = (fu > 0.2) & (fu < 0.8) & (height > 1.2) & (height < 2.0) & (_hash(cell, 3.0) > 0.3)
    picture = np.stack([_hash(cell, 1.0), _hash(cell, 2.0), _hash(cell, 4.0)], -1) * 200 + 30
    stripes = (0.6 + 0.4 * np.sin(height * 25 + fu * 9))[:, None]
    out[in_picture] = (picture * stripes)[in_picture]
    frame = (fu > 0.17) & (fu < 0.83) & (height > 1.15) & (height < 2.05) & ~in_picture & (_hash(cell, 3.0) > 0.3)
    out[frame] = (40, 30, 25)
    out[height < 0.12] = (235, 235, 235)
    return out


def _room_planes():
    """(axis, position, normal sign, texture function) of the floor, ceiling and walls."""
    return (
        (1, CAMERA_HEIGHT, -1.0, _floor_texture),
        (1, CAMERA_HEIGHT - ROOM_HEIGHT, 1.0, lambda p: np.full((len(p), 3), 225.0)),
        (2, BACK_WALL_Z, -1.0, lambda p: _wall_texture(p, 0, (190, 200, 215))),
        (2, FRONT_WALL_Z, 1.0, lambda p: _wall_texture(p, 0, (200, 200, 200))),
        (0, -ROOM_HALF_WIDTH, 1.0, lambda p: _wall_texture(p, 2, (215, 195, 170))),
        (0, ROOM_HALF_WIDTH, -1.0, lambda p: _wall_texture(p, 2, (175, 205, 185))),
    )


def _hit_plane(origin, dirs, depth, colour, normal, axis, position, sign, texture):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (position - origin[axis]) / dirs[:, axis]
    hit = (t > 1e-4) & (t < depth)
    p = origin + t[hit, None] * dirs[hit]
    depth[hit] = t[hit]
    colour[hit] = texture(p)
    n = np.zeros(3, np.float32)
    n[axis] = sign
    normal[hit] = n


def _figure_parts(figure: Figure, t: float):
    """World-space (centre, radii, colour) of each ellipsoid of a figure at time ``t``."""
    x, z = figure.x + figure.vx * t, figure.z + figure.vz * t
    heading = np.array([figure.vx, figure.vz]) / max(np.hypot(figure.vx, figure.vz), 1e-6)
    swing = 0.18 * np.sin(2.0 * np.pi * 1.2 * t + figure.x)  # walking gait, metres
    for index, (above, lateral, radii, key) in enumerate(BODY_PARTS):
        offset = np.zeros(2)
        if index in LEG_PARTS:
            offset = heading * swing * (1 if index == LEG_PARTS[0] else -1)
        elif index in ARM_PARTS:
            offset = -heading * swing * 0.6 * (1 if index == ARM_PARTS[0] else -1)
        centre = np.array([x + lateral + offset[0], CAMERA_HEIGHT - above, z + offset[1]], np.float32)
        yield centre, np.array(radii, np.float32), np.array(figure.colours[key], np.float32)


def _hit_ellipsoid(origin, dirs, depth, colour, normal, centre, radii, rgb):
    # Scale space so the ellipsoid is a unit sphere, then solve |o + t d|^2 = 1.
    o = (origin - centre) / radii
    d = dirs / radii
    a = np.einsum("ij,ij->i", d, d)
    b = d @ o
    c = o @ o - 1.0
    disc = b * b - a * c
    hit = disc > 0
    t = np.full(len(dirs), np.inf, np.float32)
    t[hit] = (-b[hit] - np.sqrt(disc[hit])) / a[hit]
    hit &= (t > 1e-4) & (t < depth)
    depth[hit] = t[hit]
    local = o + t[hit, None] * d[hit]
    n = local / radii  # gradient of the implicit function
    normal[hit] = n / np.linalg.norm(n, axis=1, keepdims=True)
    colour[hit] = rgb
