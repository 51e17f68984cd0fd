"""One camera of the node, and one inference round over all of them.

A ``Camera`` is the unit the node holds N of (one for a node without ``cameras``): its
parameters, what its inputs last said, its counters and, while configured, its world: a
FrameProcessor with its own Human3REngine (recurrent state, pose chain, resets, tracker) over
the node's one model, and its own Outputs. Nothing of one camera is reachable from another,
so a camera's bad input, stall, stamp jump or reset never touches the others.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from sensor_msgs.msg import CameraInfo

from h3r_ros.engine.multi_camera import step_together
from h3r_ros.ros.diagnostics import NodeStats
from h3r_ros.ros.frame_processor import FrameProcessor
from h3r_ros.ros.image_decoding import check_compressed, check_image
from h3r_ros.ros.outputs import Outputs
from h3r_ros.ros.parameters import CameraSettings, Settings


@dataclass
class CameraInput:
    """What the camera's last accepted image and camera_info said."""

    last_stamp: int | None = None  # ns
    image_size: tuple[int, int] | None = None  # (width, height)
    image_frame: str = ""
    camera_info: CameraInfo | None = None


class Camera:
    def __init__(self, settings: CameraSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.stats = NodeStats()
        self.input = CameraInput()
        self.check = check_compressed if settings.compressed_input else check_image
        self.processor: FrameProcessor | None = None
        self.outputs: Outputs | None = None

    def view(self, settings: Settings) -> Settings:
        """The node's parameters as this camera sees them: its own frames and input; its world
        and per-body frames named after it (two worlds never share a name)."""
        if not self.name:
            return settings
        return replace(settings, world_frame=self.settings.world_frame(settings.world_frame),
                       camera_frame=self.settings.camera_frame, compressed_input=self.settings.compressed_input,
                       body_frame_prefix=f"{settings.body_frame_prefix}{self.name}_",
                       publish_hri_bodies=False)  # REP-155's topics are the node's: fused people only

    def forget(self) -> None:
        """Cleanup: nothing of the camera's last images stays."""
        self.input = CameraInput()

    def release(self) -> None:
        if self.outputs is not None:
            self.outputs.close()
        self.outputs = self.processor = None


def step_round(engines, frames, stamps) -> list:
    """A round's engine steps: a camera alone steps as usual; several together, their frames of
    one model-input size batched through the model's fixed-shape stages (each camera's result
    is what its own step would give)."""
    if len(engines) == 1:
        return [engines[0].step(frames[0], stamps[0])]
    return step_together(engines, frames, stamps)


def process_round(cameras: list[Camera], items: dict, on_error: Callable[[Camera, BaseException], None],
                  step: Callable = step_round) -> list[Camera]:
    """One inference round: the newest message of every camera in ``items`` (name -> message),
    prepared per camera, stepped by ``step(engines, frames, stamps)`` (all at once where it can),
    published per camera. An exception is ``on_error``'s for the cameras it concerns (a failed
    step: those stepped with it); returns the cameras whose frames were published."""
    prepared = []
    for camera in cameras:
        # The processor taken now is used to the end: a transition may release the camera's
        # meanwhile, and this round (then cancelled) finishes with what it holds.
        msg, processor = items.get(camera.name), camera.processor
        if msg is None or processor is None:
            continue
        try:
            frame = processor.prepare(msg)
        except Exception as exc:  # noqa: BLE001 - this camera's frame is lost, not the round
            on_error(camera, exc)
            continue
        if frame is not None:
            prepared.append((camera, processor, frame))
    if not prepared:
        return []
    try:
        results = step([p.engine for _, p, _ in prepared], [f.rgb for _, _, f in prepared],
                       [f.msg.header.stamp for _, _, f in prepared])
    except Exception as exc:  # noqa: BLE001 - the frames stepped together are lost together
        for camera, _, _ in prepared:
            on_error(camera, exc)
        return []
    published = []
    for (camera, processor, frame), result in zip(prepared, results):
        try:
            processor.finish(frame, result)
            published.append(camera)
        except Exception as exc:  # noqa: BLE001
            on_error(camera, exc)
    return published
