"""Engine behaviour: recurrent update and reset schedule (with a scripted stand-in model, no
reference data needed), then the real tiny model on the fixture frames: manual reset,
portrait input, frames without people, bf16, and outputs computed only on request."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from h3r_ros.engine.body_model import BodyModel
from h3r_ros.engine.engine import EngineConfig, Human3REngine
from h3r_ros.demo.synthetic_smplx import write_synthetic_smplx

RES = 28  # human-branch input of the scripted model


class ScriptedModel(torch.nn.Module):
    """Follows the model contract with outputs that make the engine's bookkeeping visible.

    View v (counting every call) returns state_new = v + 1, mem_new = mem + 1, a TTT3R gate
    of 0.25, a camera translated by (v + 1, 0, 0) and ``humans[v]`` human tokens.
    """

    STATE, MEM, DIM = (1, 4, 8), (1, 2, 16), 8

    def __init__(self, humans=None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives .to() something to move
        self.cfg = SimpleNamespace(mhmr_img_res=RES, match_threshold=0.2, sinkhorn_iters=20, sinkhorn_alpha=-10.0)
        self.humans = humans or {}
        self.calls = []

    def initial_state(self, device=None, dtype=None):
        return torch.zeros(self.STATE, device=device, dtype=dtype), torch.zeros(self.MEM, device=device, dtype=dtype)

    def step(self, img, img_mhmr, state, mem, *, first, ttt3r=False, extra_outputs=frozenset(), max_humans=None,
             det_threshold=None, debug=False):
        v = len(self.calls)
        self.calls.append(dict(first=first, ttt3r=ttt3r, state=state.clone(), mem=mem.clone(), extra=extra_outputs))
        _, _, h, w = img.shape
        n = self.humans.get(v, 0)
        pts = torch.ones(1, h, w, 3)
        pts[..., :2] = 0.1
        out = {
            "pts3d_in_self_view": pts,
            "conf_self": torch.full((1, h, w), 2.0),
            "camera_pose": torch.tensor([[v + 1.0, 0, 0, 1, 0, 0, 0]]),
            "msk": torch.full((1, RES, RES, 1), 0.5),
            "smpl_scores": torch.zeros(1, RES // 14, RES // 14, 1),
            "smpl_loc": torch.full((1, n, 2), RES / 2),
            "smpl_rotmat": torch.eye(3).expand(1, n, 53, 3, 3),
            "smpl_shape": torch.zeros(1, n, 10),
            "smpl_expression": torch.zeros(1, n, 10),
            "smpl_transl": torch.tensor([0.0, 0.0, 3.0]).expand(1, n, 3),
            "human_tokens": torch.eye(self.DIM)[:n][None] * 10,
            "state_new": torch.full(self.STATE, v + 1.0),
            "mem_new": mem + 1,
        }
        out["smpl_scores"].view(-1)[:n] = 0.9
        out["smpl_det_scores"] = torch.full((1, n), 0.9)
        if ttt3r:
            out["ttt3r_gate"] = torch.full(self.STATE[:2], 0.25)
        for name in extra_outputs:
            out[name] = torch.zeros(1, h, w, 3) if name != "conf" else torch.ones(1, h, w)
        return out


FRAME = np.zeros((48, 64, 3), np.uint8)


def test_reset_interval_schedule_and_state_update():
    model = ScriptedModel()
    engine = Human3REngine(model, EngineConfig(size=32, ttt3r=True, reset_interval=3))
    results = [engine.step(FRAME, stamp=k) for k in range(7)]
    # Frames 2 and 5 reset: each is followed by an overlap copy that starts the new segment.
    assert [c["first"] for c in model.calls] == [True, False, False, True, False, False, False, True, False]
    assert [r.index for r in results] == list(range(7))
    assert [r.reset for r in results] == [True] + [False] * 6
    assert [r.stamp for r in results] == list(range(7))
    # State entering each view: blended with rate 0.25 except after a first view (rate 1)
    # and reset to the initial zeros after a reset view.
    states = [c["state"].flatten()[0].item() for c in model.calls]
    assert states == pytest.approx([0, 1, 0.25 * 2 + 0.75 * 1, 0, 4, 0.25 * 5 + 0.75 * 4, 0.25 * 6 + 0.75 * 4.25, 0, 8])
    mems = [c["mem"].flatten()[0].item() for c in model.calls]
    assert mems == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    # Poses chain across resets: frame 3 (view 4) sits on top of frame 2 (view 2).
    x = [r.cam_to_world[0, 3] for r in results]
    assert x == pytest.approx([1, 2, 3, 3 + 5, 3 + 6, 3 + 7, 3 + 7 + 9])


def test_state_without_ttt3r_and_manual_reset():
    model = ScriptedModel()
    engine = Human3REngine(model, EngineConfig(size=32, ttt3r=False, reset_interval=0))
    first = [engine.step(FRAME) for _ in range(3)]
    engine.reset()
    after = [engine.step(FRAME) for _ in range(2)]
    assert [c["first"] for c in model.calls] == [True, False, False, True, False]
    assert [c["state"].flatten()[0].item() for c in model.calls] == [0, 1, 2, 0, 4]
    assert all(not c["ttt3r"] for c in model.calls)
    assert [r.reset for r in first + after] == [True, False, False, True, False]
    assert [r.index for r in first + after] == [0, 1, 2, 3, 4]
    # A new world: the pose chain restarts at the new segment.
    assert after[0].cam_to_world[0, 3] == pytest.approx(4)


def test_match_threshold_decides_whether_tracks_continue():
    model = ScriptedModel(humans={0: 2, 1: 2})
    engine = Human3REngine(model, EngineConfig(size=32, reset_interval=0))
    assert [p.track_id for p in engine.step(FRAME).people] == [0, 1]
    # The same two people again, but no match can reach a score above 1: new ids.
    engine.config = replace(engine.config, match_threshold=1.0)
    assert [p.track_id for p in engine.step(FRAME).people] == [2, 3]
    with pytest.raises(ValueError, match="match_threshold"):
        EngineConfig(match_threshold=1.5)


def test_tracks_across_frames_without_people():
    model = ScriptedModel(humans={0: 2, 2: 1, 3: 3})
    engine = Human3REngine(model, EngineConfig(size=32, reset_interval=0))
    ids = [[p.track_id for p in engine.step(FRAME).people] for _ in range(4)]
    # Tokens are rows of a scaled identity: person k is always token k.
    assert ids == [[0, 1], [], [0], [0, 1, 2]]
    engine.reset()  # tracks are forgotten with the world, but ids are never reused
    model.humans[4] = 1
    assert [p.track_id for p in engine.step(FRAME).people] == [3]


def test_world_from_model_and_optional_outputs():
    world = np.eye(4)
    world[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # optical -> ROS axes
    world[:3, 3] = [1, 2, 3]
    model = ScriptedModel()
    engine = Human3REngine(model, EngineConfig(size=32, reset_interval=0, world_from_model=world))
    result = engine.step(FRAME)
    model_c2w = np.eye(4)
    model_c2w[0, 3] = 1
    np.testing.assert_allclose(result.cam_to_world, world @ model_c2w, atol=1e-6)
    np.testing.assert_allclose(
        result.points_world, result.points_cam @ result.cam_to_world[:3, :3].T + result.cam_to_world[:3, 3], atol=1e-6
    )
    assert result.human_mask is None and result.extras == {}
    assert model.calls[0]["extra"] == frozenset()
    assert set(result.timings) == {"preprocess", "model", "postprocess", "transfer", "tracking", "total"}

    # Output flags can change between frames; device and dtype cannot.
    engine.config = replace(engine.config, with_points=False, with_human_mask=True, extra_outputs=frozenset({"rgb"}))
    result = engine.step(FRAME)
    assert result.points_cam is None and result.points_world is None and result.conf is None
    assert result.human_mask.shape == result.input_size
    assert set(result.extras) == {"rgb"} and model.calls[-1]["extra"] == {"rgb"}
    with pytest.raises(ValueError):
        engine.config = replace(engine.config, dtype="bfloat16")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(world_from_model=np.diag([1.0, 1.0, -1.0, 1.0])),  # a reflection is not a pose
        dict(world_from_model=np.eye(3)),
        dict(extra_outputs=frozenset({"depth"})),
        dict(dtype="float64"),
        dict(size=100),
        dict(reset_interval=-1),
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        EngineConfig(**kwargs)


# --------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny():
    from fixtures import load_fixture
    from test_engine_parity import build_model

    fx = load_fixture("h3r_tiny_base")
    return fx, build_model(fx)


@pytest.fixture(scope="module")
def body_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_synthetic_smplx(root)
    return BodyModel(root)


def _frames(fx):
    return [f.numpy() for f in fx["preprocess"]["raw_frames_uint8"]]


def _run(model, frames, body_model=None, **config):
    engine = Human3REngine(model, EngineConfig(size=160, reset_interval=0, **config), body_model)
    return engine, [engine.step(f) for f in frames]


def test_manual_reset_restarts_the_world(tiny):
    fx, model = tiny
    frames = _frames(fx)[:3]
    engine, first = _run(model, frames)
    engine.reset()
    second = [engine.step(f) for f in frames]
    assert [r.reset for r in first + second] == [True, False, False, True, False, False]
    assert [r.index for r in second] == [3, 4, 5]
    # The same people get the same ids relative to the new session's first id: tracking
    # restarts, ids continue after the largest one handed out so far.
    offset = 1 + max(p.track_id for r in first for p in r.people)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.cam_to_world, b.cam_to_world)
        np.testing.assert_array_equal(a.points_world, b.points_world)
        assert [p.track_id + offset for p in a.people] == [p.track_id for p in b.people]


def test_origin_at_first_camera_composes_the_first_pose_away(tiny):
    """Each world (start, manual reset) starts exactly at its first camera; everything else
    is the model's world moved by the inverse of that first pose."""
    fx, model = tiny
    frames = _frames(fx)[:3]
    _, plain = _run(model, frames)
    engine, anchored = _run(model, frames, origin_at_first_camera=True)
    engine.reset()
    anchored += [engine.step(f) for f in frames]
    first = np.linalg.inv(plain[0].cam_to_world)
    assert not np.allclose(plain[0].cam_to_world, np.eye(4), atol=1e-3)  # the model's own first pose
    for index, result in enumerate(anchored):
        reference = plain[index % 3]
        np.testing.assert_allclose(result.cam_to_world, first @ reference.cam_to_world, atol=1e-5)
        moved = reference.points_world @ first[:3, :3].T + first[:3, 3]
        np.testing.assert_allclose(result.points_world, moved, atol=1e-4)
    for result in (anchored[0], anchored[3]):
        np.testing.assert_allclose(result.cam_to_world, np.eye(4), atol=1e-6)


def test_a_transformed_person_drives_a_stock_smplx_forward_in_the_new_frame(tiny, body_model, tmp_path):
    import roma
    import smplx

    fx, model = tiny
    _, results = _run(model, _frames(fx)[:2], body_model, with_vertices=True)
    person = next(p for r in results for p in r.people)
    rot = roma.rotvec_to_rotmat(torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64)).numpy()
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = rot, [2.0, -0.5, 1.2]
    moved = person.transformed(transform)
    expected = person.vertices_world @ rot.T + transform[:3, 3]
    np.testing.assert_allclose(moved.vertices_world, expected, atol=1e-9)
    np.testing.assert_allclose(moved.joints_world, person.joints_world @ rot.T + transform[:3, 3], atol=1e-9)
    np.testing.assert_allclose(moved.head_world, rot @ person.head_world + transform[:3, 3], atol=1e-9)
    np.testing.assert_allclose(moved.pelvis_rotation_world, rot @ person.pelvis_rotation_world, atol=1e-9)

    root = tmp_path / "smplx"
    write_synthetic_smplx(root)
    stock = smplx.create(str(next(root.rglob("SMPLX_NEUTRAL.npz"))), model_type="smplx", gender="neutral",
                         use_pca=False, flat_hand_mean=True, num_betas=10)
    pose = torch.tensor(moved.full_pose_world, dtype=torch.float32).reshape(1, 55, 3)
    out = stock(betas=torch.tensor(moved.betas, dtype=torch.float32)[None],
                expression=torch.tensor(moved.expression, dtype=torch.float32)[None],
                global_orient=pose[:, 0], body_pose=pose[:, 1:22].reshape(1, -1),
                jaw_pose=pose[:, 22], leye_pose=pose[:, 23], reye_pose=pose[:, 24],
                left_hand_pose=pose[:, 25:40].reshape(1, -1), right_hand_pose=pose[:, 40:55].reshape(1, -1),
                transl=torch.tensor(moved.transl_world, dtype=torch.float32)[None])
    np.testing.assert_allclose(out.vertices[0].detach().numpy(), expected, atol=1e-4)


def test_portrait_input(tiny, body_model):
    fx, model = tiny
    portrait = [np.ascontiguousarray(f.transpose(1, 0, 2)) for f in _frames(fx)[:2]]  # 320 x 180
    _, results = _run(model, portrait, body_model, with_human_mask=True)
    for result in results:
        assert result.input_size == (160, 80)
        assert result.rgb.shape == (160, 80, 3)
        assert result.points_world.shape == (160, 80, 3) and result.conf.shape == (160, 80)
        assert result.human_mask.shape == (160, 80)
        assert (result.K[0, 2], result.K[1, 2]) == (40, 80)
        assert np.isfinite(result.points_world).all()
        for person in result.people:
            assert 0 <= person.head_pixel[0] <= 79 and 0 <= person.head_pixel[1] <= 159
            assert np.isfinite(person.joints_world).all()


def test_frames_without_people(tiny, body_model):
    fx, model = tiny
    blind = type(model)(model.cfg)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.downstream_head.mlp_classif[2].bias.fill_(-30.0)  # no cell reaches the threshold
    _, results = _run(blind, _frames(fx)[:3], body_model, with_vertices=True)
    for result in results:
        assert result.people == []
        assert np.isfinite(result.points_world).all()
        # The focal is still estimated from the points (clipped at 0 only when that fails).
        assert np.isfinite(result.K).all() and result.K[0, 0] > 0 and result.K[1, 1] == result.K[0, 0]
        assert (result.K[0, 2], result.K[1, 2]) == (80, 40)


def test_vertices_only_when_asked(tiny, body_model):
    fx, model = tiny
    frames = _frames(fx)[:2]
    _, skeleton = _run(model, frames, body_model)
    _, meshes = _run(model, frames, body_model, with_vertices=True)
    _, bare = _run(model, frames)
    assert any(r.people for r in skeleton)
    for a, b, c in zip(skeleton, meshes, bare):
        for p, q, r in zip(a.people, b.people, c.people):
            assert p.vertices_cam is None and p.vertices_world is None
            assert q.vertices_cam.shape == q.vertices_world.shape == (10475, 3)
            np.testing.assert_allclose(p.joints_world, q.joints_world, atol=1e-5)
            # Without a body model the network's own outputs and the pose are still reported;
            # what needs the body's shape is not.
            assert r.joints_cam is None and r.joints_world is None and r.transl_world is None
            assert r.pelvis_rotation_world is None
            np.testing.assert_array_equal(r.head_cam, p.head_cam)
            np.testing.assert_allclose(r.full_pose_world, p.full_pose_world, atol=1e-5)
            np.testing.assert_allclose(r.head_world, p.joints_world[15], atol=1e-5)
            np.testing.assert_allclose(p.head_world, p.joints_world[15], atol=1e-5)


def test_warm_up_compiles_the_fixed_shape_stages_once_and_leaves_a_fresh_world(tiny):
    fx, model = tiny
    frames = _frames(fx)[:3]
    graphs = []

    def counting_backend(graph, _example_inputs):  # runs the traced graph as it is
        graphs.append(graph)
        return graph.forward

    compiled = type(model)(model.cfg)
    compiled.load_state_dict(model.state_dict())
    compiled.compile_fixed_shape_stages(backend=counting_backend, fullgraph=True)
    engine = Human3REngine(compiled, EngineConfig(size=160, reset_interval=0))
    try:
        height, width = frames[0].shape[:2]
        assert engine.warm_up(width, height) > 0
        assert len(graphs) == 3  # encoder, DINOv2, dense heads: each traced whole, once
        results = [engine.step(f) for f in frames]
        # Frames of the warmed-up size compile nothing more, whatever the number of people.
        assert len({len(r.people) for r in results}) > 1
        assert len(graphs) == 3
        _, eager = _run(model, frames)
        assert [r.index for r in results] == [0, 1, 2] and [r.reset for r in results] == [True, False, False]
        for a, b in zip(results, eager):
            np.testing.assert_allclose(a.cam_to_world, b.cam_to_world, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(a.points_world, b.points_world, rtol=1e-6, atol=1e-6)
            assert [p.track_id for p in a.people] == [p.track_id for p in b.people]
        # Another frame size compiles the stages whose shapes follow it; the DINOv2 input is
        # always the padded square.
        engine.step(np.ascontiguousarray(frames[0].transpose(1, 0, 2)))
        assert len(graphs) == 5
    finally:
        torch._dynamo.reset()


def test_warm_up_leaves_no_trace_even_when_grey_frames_have_people(tiny):
    fx, model = tiny
    config = EngineConfig(size=160, reset_interval=0, det_threshold=0.0, max_humans=2)  # every cell fires
    frame = _frames(fx)[0]
    warmed, fresh = Human3REngine(model, config), Human3REngine(model, config)
    warmed.warm_up(frame.shape[1], frame.shape[0])
    a, b = warmed.step(frame), fresh.step(frame)
    assert (a.index, a.reset) == (0, True)
    assert [p.track_id for p in a.people] == [p.track_id for p in b.people] == [0, 1]
    np.testing.assert_array_equal(a.cam_to_world, b.cam_to_world)
    np.testing.assert_array_equal(a.points_world, b.points_world)


def test_dense_head_convolutions_run_in_channels_last(tiny):
    fx, model = tiny
    engine = Human3REngine(model, EngineConfig(size=160, reset_interval=0))
    layouts = []

    def record(_module, args):
        layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))

    convs = [m for m in engine.model.downstream_head.dpt_self.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    handles = [conv.register_forward_pre_hook(record) for conv in convs]
    try:
        engine.step(_frames(fx)[0])
    finally:
        for handle in handles:
            handle.remove()
    assert len(layouts) == len(convs) - 2  # refinenet4.resConfUnit1 (two convs) is stored, never called
    assert all(layouts)


# bfloat16 error model. bf16 keeps 8 significant bits: round-to-nearest leaves a relative
# error of at most U = 2^-8 per rounding. A bf16 run is the fp32 computation with such a
# rounding at every tensor it stores, so its deviation from fp32 is the network's response to
# those perturbations. The same model and frames in fp32 with weights and every Linear/Conv
# input and output rounded to bf16 (round-to-nearest-even, exactly specified, so the same on
# every CPU up to fp32 kernel rounding) measure that response, D. A real bf16 run rounds at those sites and more
# (norms, softmax, residual sums): with fp32 accumulation (native bf16: AMX, AVX512-BF16)
# that at most doubles the rounding sites, whose errors add in quadrature, and a deterministic
# rounding pattern is one draw of the error: tolerance 4 D. Software-emulated kernels (AVX2
# only) may also round partial sums to bf16, so one dot product of length K carries up to
# sqrt(K) U instead of U; for this model's inner sizes (64-256) that is 4x more: 16 D.
# U is a floor for outputs on which the emulation happens to round nothing.
BF16_U = 2.0**-8


def _bf16_rounded(t):
    return t.bfloat16().float() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t


def _bf16_storage_emulation(model):
    """fp32 copy of ``model`` whose weights and Linear/Conv inputs and outputs are rounded to bf16."""
    emulated = type(model)(model.cfg)
    emulated.load_state_dict({k: _bf16_rounded(v) for k, v in model.state_dict().items()})
    for module in emulated.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_pre_hook(lambda _m, args: tuple(_bf16_rounded(a) for a in args))
            module.register_forward_hook(lambda _m, _args, out: _bf16_rounded(out))
    return emulated.eval()


def test_bfloat16_within_its_rounding_error_model(tiny):
    from h3r_ros.engine.precision import cpu_bf16_capability, result_deviation

    fx, model = tiny
    frames = _frames(fx)[:3]
    _, reference = _run(model, frames)
    _, emulated = _run(_bf16_storage_emulation(model), frames)
    bf16 = type(model)(model.cfg)
    bf16.load_state_dict(model.state_dict())
    engine, results = _run(bf16, frames, dtype="bfloat16")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    assert all(r.points_world.dtype == np.float32 for r in results)

    native, capability = cpu_bf16_capability()
    factor = 4.0 if native else 16.0
    response, measured = result_deviation(emulated, reference), result_deviation(results, reference)
    report = f"{capability}; bf16 {measured}, emulation {response}, factor {factor}"
    for key, value in measured.items():
        assert value <= factor * max(response[key], BF16_U), f"{key}: {report}"


@pytest.mark.parametrize("size", [64, 80, 176])
def test_square_landscape_portrait_and_tiny_frames_at_other_input_sizes(tiny, size):
    """Sizes that are not multiples of 64 used to break square frames (4:3 crop)."""
    from h3r_ros.engine.preprocess import crop_geometry

    _, model = tiny
    engine = Human3REngine(model, EngineConfig(size=size, reset_interval=0))
    rng = np.random.default_rng(size)
    for width, height in ((320, 180), (180, 320), (200, 200), (1, 1), (size, 16)):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        result = engine.step(rgb)
        assert result.input_size == crop_geometry(width, height, size).input_size
        assert all(n % 16 == 0 and n > 0 for n in result.input_size)
        assert np.isfinite(result.points_world).all()
