"""Pure-PyTorch Human3R network (no ROS): configuration and model."""

from .config import Human3RConfig
from .human3r import EXTRA_OUTPUTS, Human3R

__all__ = ["EXTRA_OUTPUTS", "Human3R", "Human3RConfig"]
