"""Several cameras, one model: each camera keeps its own recurrent world (a ``Human3REngine``:
state, pose memory, resets, pose chain, tracks), and one inference round serves them all.

Frames whose model input has the same size go through the model's fixed-shape stages as one
batch (``Human3R.step_views``); everything that carries a camera's history or follows its
number of people runs per camera, so each camera gets what its own engine alone would give.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from .engine import Human3REngine
from .result import FrameResult


@torch.inference_mode()
def step_together(
    engines: Sequence[Human3REngine], frames: Sequence[np.ndarray], stamps: Sequence[object] | None = None
) -> list[FrameResult]:
    """One frame per engine (RGB uint8, any size each), all engines over the same model
    object; returns each engine's ``FrameResult`` as its ``step`` would. Each engine keeps its
    own configuration (TTT3R, reset interval, thresholds, outputs)."""
    stamps = [None] * len(engines) if stamps is None else list(stamps)
    if not len(engines) == len(frames) == len(stamps):
        raise ValueError(f"{len(engines)} engines, {len(frames)} frames and {len(stamps)} stamps")
    if len({id(engine) for engine in engines}) != len(engines):
        raise ValueError("an engine appears twice: one frame per camera and round")
    model = engines[0].model if engines else None
    for engine in engines:
        if engine.model is not model:
            raise ValueError("the engines must share one model object")
        if (engine.device, engine.dtype) != (model.device, model.dtype):
            raise ValueError(f"an engine runs {engine.dtype} on {engine.device}, the shared model is "
                             f"{model.dtype} on {model.device}: one device and dtype for all")

    prepared = [engine._prepare(rgb) for engine, rgb in zip(engines, frames)]
    for frame in prepared:
        frame.timer.idle()  # the round starts when every frame is ready
    by_size = defaultdict(list)
    for i, frame in enumerate(prepared):
        by_size[tuple(frame.img.shape[-2:])].append(i)
    views = [None] * len(engines)
    for members in by_size.values():
        inputs = [engines[i]._view_inputs(engines[i].config.extra_outputs) for i in members]
        outs = model.step_views(torch.cat([prepared[i].img for i in members]),
                                torch.cat([prepared[i].img_mhmr for i in members]), inputs)
        for i, view_inputs, out in zip(members, inputs, outs):
            views[i] = engines[i]._advance(out, view_inputs.first, prepared[i].auto_reset)
    for frame in prepared:
        frame.timer.lap("model")
    return [engine._complete(frame, view, stamp)
            for engine, frame, view, stamp in zip(engines, prepared, views, stamps)]
