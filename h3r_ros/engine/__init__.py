"""Streaming Human3R engine (no ROS): pre-processing, recurrent state, tracking, SMPL-X."""

from .body_model import BodyModel, BodyOutput
from .engine import EngineConfig, Human3REngine
from .result import FrameResult, Person

__all__ = ["BodyModel", "BodyOutput", "EngineConfig", "FrameResult", "Human3REngine", "Person"]
