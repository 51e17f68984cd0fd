"""Streaming Human3R engine (no ROS): pre-processing, recurrent state, tracking, SMPL-X."""
