"""``python -m h3r_ros.weights fetch`` against a Hub stand-in on 127.0.0.1 (test/hub_server.py).

The fetch runs as its own process, as a user runs it, with ``HF_ENDPOINT`` pointing at the
stand-in and an empty ``HF_HOME``; the stand-in serves the node tests' tiny checkpoint
under a released file name. Nothing here reaches the real Hub (conftest.py points every
process at a closed loopback port and sets HF_HUB_OFFLINE; these tests lift that only
towards the stand-in).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub, closed_port_endpoint
from ros_helpers import synthetic_frames, write_tiny_checkpoint

from h3r_ros import weights
from h3r_ros.model.checkpoint import load_human3r, read_checkpoint
from h3r_ros.ros.engine_loader import find_checkpoint

REPO = Path(__file__).resolve().parent.parent
FILENAME = "human3r_672S.pth"


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> bytes:
    """The tiny model in the training format, plus training state the converter drops (as
    in real training checkpoints); it makes the file larger than the client's 10 MB read
    chunk, so a cut connection leaves a partial file to resume from."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / FILENAME, synthetic_frames(4))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["optimizer"] = {"state": torch.randn(6 * 2**20, generator=torch.Generator().manual_seed(0))}
    torch.save(checkpoint, path)
    return path.read_bytes()


def range_start(header: str | None) -> int:
    assert header is not None and header.startswith("bytes=") and header.endswith("-"), header
    return int(header[len("bytes="):-1])


@pytest.fixture
def hub(tiny_pth):
    with FakeHub(weights.REPO_ID, {FILENAME: tiny_pth}) as server:
        yield server


def hub_env(tmp_path: Path, endpoint: str) -> dict:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("HF_HUB_OFFLINE", None)
    return env


def run_fetch(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "h3r_ros.weights", "fetch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def checkpoint_like_files(dest: Path) -> list[str]:
    """Everything in ``dest`` the node could take for a checkpoint."""
    return sorted(p.name for p in dest.iterdir() if p.name.startswith("human3r"))


def assert_same_weights(tensors_path: Path, original: bytes, tmp_path: Path) -> None:
    reference = tmp_path / "reference.pth"
    reference.write_bytes(original)
    expected, _ = read_checkpoint(reference)
    model, _ = load_human3r(tensors_path)
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


def test_fetch_downloads_verifies_converts_and_loads(hub, tiny_pth, tmp_path):
    dest = tmp_path / "models"
    done = run_fetch(hub_env(tmp_path, hub.endpoint), "--dest", str(dest))
    assert done.returncode == 0, done.stderr

    tensors_path = dest / "human3r_672S.safetensors"
    assert checkpoint_like_files(dest) == ["human3r_672S.json", "human3r_672S.safetensors"]
    assert not list((dest / weights.STAGING).iterdir()), "nothing may stay in the staging folder"
    assert str(tensors_path) in done.stdout and "CC BY-NC-SA 4.0" in done.stdout
    header = json.loads((dest / "human3r_672S.json").read_text())
    assert header["source"]["sha256"] == hashlib.sha256(tiny_pth).hexdigest()
    assert find_checkpoint([dest]) == tensors_path
    assert_same_weights(tensors_path, tiny_pth, tmp_path)

    # A second fetch sees the converted pair and downloads nothing.
    before = len(hub.gets())
    again = run_fetch(hub_env(tmp_path, hub.endpoint), "--dest", str(dest))
    assert again.returncode == 0, again.stderr
    assert "already there" in again.stdout and len(hub.gets()) == before


def test_keep_pth_keeps_the_original_beside_the_pair_and_the_token_is_sent(hub, tiny_pth, tmp_path):
    dest = tmp_path / "models"
    done = run_fetch(hub_env(tmp_path, hub.endpoint) | {"HF_TOKEN": "hf_not_a_real_token"}, "--dest", str(dest),
                     "--keep-pth")
    assert done.returncode == 0, done.stderr
    assert hub.authorization and set(hub.authorization) == {"Bearer hf_not_a_real_token"}
    assert (dest / FILENAME).read_bytes() == tiny_pth
    assert checkpoint_like_files(dest) == ["human3r_672S.json", FILENAME, "human3r_672S.safetensors"]


def test_a_cut_connection_is_resumed_with_a_range_request(hub, tiny_pth, tmp_path):
    cut = len(tiny_pth) * 2 // 3
    hub.cut_after = cut
    dest = tmp_path / "models"
    done = run_fetch(hub_env(tmp_path, hub.endpoint), "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    ranges = [rng for _, rng in hub.gets()]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    assert 0 < range_start(ranges[1]) <= cut, "the second request must continue where the data stopped"
    assert_same_weights(dest / "human3r_672S.safetensors", tiny_pth, tmp_path)


def test_an_interrupted_run_resumes_on_the_next_run(hub, tiny_pth, tmp_path):
    cut = len(tiny_pth) * 2 // 3
    hub.cut_after, hub.fail_after_cut = cut, True
    dest = tmp_path / "models"
    env = hub_env(tmp_path, hub.endpoint)
    first = run_fetch(env, "--dest", str(dest))
    assert first.returncode == 1
    assert "download interrupted" in first.stderr and "run the same command again" in first.stderr
    assert checkpoint_like_files(dest) == [], "a partial download must not look like a checkpoint"
    parts = list((dest / weights.STAGING).glob("*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size <= cut
    kept = parts[0].stat().st_size

    hub.failing = False
    second = run_fetch(env, "--dest", str(dest))
    assert second.returncode == 0, second.stderr
    assert range_start(hub.gets()[-1][1]) == kept
    assert_same_weights(dest / "human3r_672S.safetensors", tiny_pth, tmp_path)


def test_a_corrupted_download_is_refused_and_deleted(hub, tmp_path):
    hub.corrupt = True
    dest = tmp_path / "models"
    done = run_fetch(hub_env(tmp_path, hub.endpoint), "--dest", str(dest))
    assert done.returncode == 1
    assert "checksum mismatch" in done.stderr and "deleted" in done.stderr
    assert checkpoint_like_files(dest) == []
    assert not list((dest / weights.STAGING).iterdir())


def test_a_copy_in_the_hugging_face_cache_is_used_without_downloading(hub, tiny_pth, tmp_path):
    env = hub_env(tmp_path, hub.endpoint)
    # Fill HF_HOME's cache as `hf download faneggg/human3r human3r_672S.pth` would.
    filler = ("import sys; from huggingface_hub import hf_hub_download; "
              f"print(hf_hub_download({weights.REPO_ID!r}, {FILENAME!r}))")
    cached = subprocess.run([sys.executable, "-c", filler], env=env, capture_output=True, text=True, timeout=60)
    assert cached.returncode == 0, cached.stderr
    gets = len(hub.gets())
    dest = tmp_path / "models"
    done = run_fetch(env, "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert "Hugging Face cache" in done.stdout and len(hub.gets()) == gets
    assert_same_weights(dest / "human3r_672S.safetensors", tiny_pth, tmp_path)


@pytest.mark.parametrize("case", ["offline_flag", "unreachable", "not_found"])
def test_failures_say_what_happened(hub, tmp_path, case):
    env = hub_env(tmp_path, hub.endpoint)
    args = ["--dest", str(tmp_path / "models")]
    # asked: the stand-in's file requests; None where the stand-in is not the endpoint.
    if case == "offline_flag":
        env["HF_HUB_OFFLINE"] = "1"
        expected, asked = "HF_HUB_OFFLINE is set", []
    elif case == "unreachable":
        env["HF_ENDPOINT"] = closed_port_endpoint()
        expected, asked = "offline: cannot reach " + env["HF_ENDPOINT"], None
    else:
        args += ["--variant", "896L"]
        expected = "not found: faneggg/human3r/human3r_896L.pth"
        asked = [("HEAD", f"/{weights.REPO_ID}/resolve/main/human3r_896L.pth")]  # the metadata only, no download
    done = run_fetch(env, *args)
    assert done.returncode == 1
    assert expected in done.stderr and "Traceback" not in done.stderr
    if asked is not None:
        assert [(method, path) for method, path, _ in hub.requests if "/resolve/" in path] == asked


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_too_little_disk_space_is_reported_before_downloading(hub, tiny_pth, tmp_path, monkeypatch):
    remote = weights.RemoteFile(FILENAME, f"{hub.endpoint}/{weights.REPO_ID}/resolve/main/{FILENAME}",
                                hashlib.sha256(tiny_pth).hexdigest(), len(tiny_pth), "0" * 40)
    monkeypatch.setattr(weights, "remote_file", lambda variant, revision="main": remote)
    monkeypatch.setattr(weights.shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(weights.FetchError) as error:
        weights.fetch("672S", tmp_path / "models", log=lambda *_: None)
    assert error.value.kind == "disk_full" and "disk full" in str(error.value)
    assert not hub.gets() and checkpoint_like_files(tmp_path / "models") == []


def test_the_suite_never_talks_to_the_real_hub():
    from huggingface_hub import constants

    assert constants.ENDPOINT.startswith("http://127.0.0.1:") and constants.is_offline_mode()
