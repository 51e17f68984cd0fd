"""Several cameras over one model (h3r_ros.engine.multi_camera): two reference recordings
stepped together as two cameras of one input size, batched, reproduce the official numbers;
a camera with another input size beside them gets exactly what its own engine gives."""

import dataclasses

import numpy as np
import pytest
import torch

from fixtures import fixture_path, load_fixture
from h3r_ros.engine.body_model import BodyModel
from h3r_ros.engine.engine import EngineConfig, Human3REngine
from h3r_ros.engine.multi_camera import step_together
from h3r_ros.model import EXTRA_OUTPUTS
from h3r_ros.model.human3r import ViewInputs
from parity_checks import CLOSE, assert_frames_match, build_model

# Same frames and weights; TTT3R off and no reset / TTT3R on with a reset every 3 frames.
RECORDINGS = ("h3r_tiny_base", "h3r_tiny_reset3_ttt3r")
# The batched stages, each by a module whose first input has the batch as leading dimension.
BATCHED = {"encoder": "enc_blocks.0", "dinov2": "backbone", "mask head": "downstream_head.mlp_msk",
           "dense heads": "downstream_head.dpt_self", "pose head": "downstream_head.pose_head"}


@pytest.fixture(scope="module")
def run():
    """The recordings' two cameras and a third (4:3 crops of the same frames: another model
    input size, other options) stepped together over one model, with the batch size of each
    call of the batched stages recorded; and the third camera's own one-camera run."""
    fxs = [load_fixture(name) for name in RECORDINGS]
    frames = fxs[0]["preprocess"]["raw_frames_uint8"]
    assert torch.equal(fxs[1]["preprocess"]["raw_frames_uint8"], frames)
    model = build_model(fxs[0])
    body = BodyModel(fixture_path("smplx"))
    configs = [EngineConfig(size=fx["config"]["demo_size"], ttt3r=fx["use_ttt3r"], reset_interval=fx["reset_interval"],
                            with_vertices=True, with_human_mask=True, extra_outputs=EXTRA_OUTPUTS)
               for fx in fxs]
    configs.append(dataclasses.replace(configs[0], ttt3r=True, reset_interval=2, max_humans=2, with_vertices=False,
                                       extra_outputs=frozenset({"rgb"})))
    # The third camera stops after 3 frames (one reset): later rounds serve the other two.
    streams = [[f.numpy() for f in frames]] * 2 + [[np.ascontiguousarray(f[:, 40:280].numpy()) for f in frames[:3]]]
    engines = [Human3REngine(model, config, body) for config in configs]

    batches = {stage: [] for stage in BATCHED}

    def record(stage):
        def hook(_module, args, _out):
            first = args[0] if torch.is_tensor(args[0]) else args[0][0]  # the DPT takes a list of maps
            batches[stage].append(first.shape[0])
        return hook

    hooks = [model.get_submodule(path).register_forward_hook(record(stage)) for stage, path in BATCHED.items()]
    rounds = [dict(enumerate(step_together(engines, [stream[0] for stream in streams], [0] * len(engines))))]
    for hook in hooks:
        hook.remove()  # the first round (no overlap view) is enough
    for k in range(1, len(frames)):
        pending = [i for i, stream in enumerate(streams) if k < len(stream)]
        results = step_together([engines[i] for i in pending], [streams[i][k] for i in pending], [k] * len(pending))
        rounds.append(dict(zip(pending, results)))
    alone = Human3REngine(model, configs[2], body)
    third_alone = [alone.step(rgb, stamp=k) for k, rgb in enumerate(streams[2])]
    per_camera = [[r[i] for r in rounds if i in r] for i in range(len(engines))]
    return fxs, per_camera, third_alone, batches


def test_two_cameras_batched_reproduce_their_recordings(run):
    fxs, per_camera, _, _ = run
    for fx, results in zip(fxs, per_camera):
        assert_frames_match(fx, results)


def test_a_camera_of_another_size_gets_what_its_engine_alone_gives(run):
    _, per_camera, alone, _ = run
    assert per_camera[2][0].input_size != per_camera[0][0].input_size
    # Its model input size is its own: its batch holds only its view, the computation its
    # engine alone makes, hence the same numbers.
    assert len(per_camera[2]) == len(alone) == 3
    for together, own in zip(per_camera[2], alone):
        assert_same(together, own)


def test_frames_of_one_size_go_through_the_fixed_shape_stages_as_one_batch(run):
    *_, first_round = run
    # Round 0 (no overlap view): the two recordings' cameras as one batch, the other size alone.
    assert first_round == {stage: [2, 1] for stage in BATCHED}


def test_views_asking_for_other_outputs_share_the_batch_and_get_their_own():
    """Human3R.step_views over two sequences with other frames and options each (extra
    outputs, TTT3R, first view or not): each view's outputs are what a step of it alone gives."""
    fx = load_fixture(RECORDINGS[0])
    model = build_model(fx)
    frames = [fx["views"][k] for k in (0, 1)]
    state, mem = model.initial_state()
    carried = model.step(frames[0]["img"], frames[0]["img_mhmr"], state, mem, first=True)
    views = [ViewInputs(state, mem, first=True, extra_outputs=EXTRA_OUTPUTS),
             ViewInputs(carried["state_new"], carried["mem_new"], first=False, ttt3r=True)]
    together = model.step_views(torch.cat([f["img"] for f in frames]), torch.cat([f["img_mhmr"] for f in frames]),
                                views)
    for frame, inputs, out in zip(frames, views, together):
        own = model.step(frame["img"], frame["img_mhmr"], inputs.state, inputs.mem, first=inputs.first,
                         ttt3r=inputs.ttt3r, extra_outputs=inputs.extra_outputs)
        assert out.keys() == own.keys()
        for key in own:
            torch.testing.assert_close(out[key], own[key], **CLOSE, msg=lambda m: f"{key}: {m}")


def test_cameras_must_share_one_model_and_appear_once():
    fx = load_fixture(RECORDINGS[0])
    model, other = build_model(fx), build_model(fx)
    frame = fx["preprocess"]["raw_frames_uint8"][0].numpy()
    engine = Human3REngine(model, EngineConfig(size=fx["config"]["demo_size"]))
    with pytest.raises(ValueError, match="share one model"):
        step_together([engine, Human3REngine(other, engine.config)], [frame, frame])
    with pytest.raises(ValueError, match="appears twice"):
        step_together([engine, engine], [frame, frame])
    with pytest.raises(ValueError, match="2 engines, 1 frames"):
        step_together([engine, Human3REngine(model, engine.config)], [frame])


def assert_same(a, b, where="result"):
    """Equal values, field by field (timings aside)."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for field in dataclasses.fields(a):
            if field.name != "timings":
                assert_same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape and np.array_equal(a, b), where
    else:
        assert a == b, where
