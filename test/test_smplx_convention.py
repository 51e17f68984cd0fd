"""The documented SMPL-X convention of h3r_ros/Human, end to end: the engine's people go
through the node's message conversion and the CDR wire format, and a stock ``smplx``
forward of the neutral model, called exactly as msg/Human.msg says, reproduces the
engine's world-frame mesh and skeleton."""

import dataclasses

import numpy as np
import pytest
import smplx
import torch
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

from h3r_ros.msg import Human, HumanArray
from h3r_ros.ros.conversions import humans_msg
from h3r_ros.ros.engine_loader import load_engine
from ros_helpers import settings_for, tiny_assets


@pytest.fixture(scope="module")
def people_and_message():
    assets = tiny_assets()
    loaded = load_engine(settings_for(assets.parameters()))
    engine = loaded.engine
    engine.config = dataclasses.replace(engine.config, with_vertices=True)
    for frame in assets.frames:
        result = engine.step(frame, stamp=None)
        if len(result.people) >= 2:
            break
    assert len(result.people) >= 2, "the tiny model should see people in the synthetic frames"
    header = Header(frame_id="world")
    wire = serialize_message(humans_msg(result, header, "camera_optical", with_vertices=True))
    return assets, result.people, deserialize_message(wire, HumanArray)


def stock_forward(smplx_dir, human):
    """Exactly the call documented in msg/Human.msg."""
    model = smplx.create(
        str(smplx_dir), "smplx", gender="neutral", use_pca=False, flat_hand_mean=True,
        num_betas=10, num_expression_coeffs=10,
    )
    pose = torch.tensor(np.asarray(human.full_pose, dtype=np.float32))[None]
    with torch.no_grad():
        out = model(
            betas=torch.tensor(np.asarray(human.betas, dtype=np.float32))[None],
            expression=torch.tensor(np.asarray(human.expression, dtype=np.float32))[None],
            transl=torch.tensor(np.asarray(human.transl, dtype=np.float32))[None],
            global_orient=pose[:, 0:3], body_pose=pose[:, 3:66], jaw_pose=pose[:, 66:69],
            leye_pose=pose[:, 69:72], reye_pose=pose[:, 72:75],
            left_hand_pose=pose[:, 75:120], right_hand_pose=pose[:, 120:165],
        )
    return out.vertices[0].numpy(), out.joints[0, : Human.NUM_JOINTS].numpy()


def test_stock_smplx_forward_of_message_parameters_reproduces_the_engine_mesh(people_and_message):
    assets, people, msg = people_and_message
    assert [h.track_id for h in msg.humans] == [p.track_id for p in people]
    for person, human in zip(people, msg.humans):
        vertices, joints = stock_forward(assets.smplx_dir, human)
        # float32 parameters on the wire: agreement to a few micrometres on metre-scale bodies
        np.testing.assert_allclose(vertices, person.vertices_world, atol=2e-5)
        np.testing.assert_allclose(joints, person.joints_world, atol=2e-5)
        # and the message's own geometry says the same
        np.testing.assert_allclose(vertices, [(v.x, v.y, v.z) for v in human.vertices], atol=2e-5)
        np.testing.assert_allclose(joints, [(j.x, j.y, j.z) for j in human.joints], atol=2e-5)
        np.testing.assert_allclose(joints[Human.JOINT_HEAD], [human.head.x, human.head.y, human.head.z], atol=2e-5)
        pelvis = human.pelvis.position
        np.testing.assert_allclose(joints[Human.JOINT_PELVIS], [pelvis.x, pelvis.y, pelvis.z], atol=2e-5)


def test_eyes_are_zero_and_pose_is_joint_major(people_and_message):
    _, people, msg = people_and_message
    for person, human in zip(people, msg.humans):
        pose = np.asarray(human.full_pose).reshape(Human.NUM_JOINTS, 3)
        np.testing.assert_array_equal(pose[[Human.JOINT_LEFT_EYE, Human.JOINT_RIGHT_EYE]], 0.0)
        np.testing.assert_allclose(pose, person.full_pose_world, atol=1e-6)
