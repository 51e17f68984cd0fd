"""scripts/gpu_check.py on CPU with the fixtures' tiny model: the speed rows, the time budget,
the table, the parity verdicts and the exit without CUDA. Nothing here runs a released-size
model, on any machine: a GPU machine runs the full check by hand."""

import importlib.util
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures import FIXTURES_DIR, load_fixture

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

SPEED_VALUE = re.compile(r"(?P<median>\S+) FPS median, (?P<p90>\S+) FPS at p90 frame time, (?P<people>\d+) people, "
                         r"peak (?P<peak>\S+) GiB RSS, warm-up (?P<warm>\S+) s")

CAMERA_VALUE = re.compile(r"(?P<fps>\S+) FPS aggregate, (?P<round>\S+) ms per round median, (?P<people>[\d/]+) "
                          r"people per frame, peak (?P<peak>\S+) GiB RSS")


def parse_table(text: str) -> list[tuple[str, str, str]]:
    """(check, verdict, value) per row of the printed table, read back by its columns."""
    header, *lines, total = text.splitlines()
    assert header.split() == ["check", "result"] and re.fullmatch(r"\(total \d+ s\)", total), text
    column = header.index("result")
    return [(line[:column].rstrip(), line[column:column + 4].rstrip(), line[column + 6:]) for line in lines]


@pytest.fixture(scope="module")
def tiny():
    """The fixtures' tiny configuration at their 160 px model input (random weights here)."""
    return "tiny", gpu_check.fixture_config(load_fixture("h3r_tiny_base")), 160


def test_speed_rows_are_measured_until_the_budget_is_spent_then_skipped(tiny):
    budget = 1.0
    started = time.monotonic()
    rows = gpu_check.speed_rows([tiny], ["float32", "bfloat16"], [False, True], "cpu", frames=2, warmup=0,
                                humans=2, started=started, budget=budget)
    measured = next(rows)
    # Spend the budget whatever the first row took: each later row must see it spent.
    time.sleep(max(0.0, started + budget - time.monotonic()) + 0.05)
    skipped = list(rows)
    table = parse_table(gpu_check.table([measured, *skipped], time.monotonic() - started))

    assert [(check, verdict) for check, verdict, _ in table] == [
        ("speed tiny float32 eager", "info"), ("speed tiny float32 compiled", "SKIP"),
        ("speed tiny bfloat16 eager", "SKIP"), ("speed tiny bfloat16 compiled", "SKIP")]
    assert all(value == "skipped: past the 1 s budget" for _, _, value in table[1:])
    figures = SPEED_VALUE.fullmatch(table[0][2])
    assert figures, table[0][2]
    median, p90, peak, warm = (float(figures[k]) for k in ("median", "p90", "peak", "warm"))
    assert all(math.isfinite(x) and x > 0 for x in (median, p90, peak)), table[0][2]
    assert p90 <= median  # the p90 frame time is the slow end: its FPS cannot exceed the median
    assert warm == 0  # warmup=0: no warm-up frames ran, and the row reports none
    assert int(figures["people"]) == 2  # the forced detections reach the host results


def test_camera_rows_serve_every_camera_batched_and_one_after_another(tiny):
    rows = gpu_check.camera_rows([tiny], ["float32"], [2], "cpu", frames=1, warmup=0, humans=2,
                                 started=time.monotonic(), budget=600.0)
    table = parse_table(gpu_check.table(list(rows), 0.0))

    assert [(check, verdict) for check, verdict, _ in table] == [
        ("cameras tiny float32 x2 batched", "info"), ("cameras tiny float32 x2 one after another", "info")]
    for _, _, value in table:
        figures = CAMERA_VALUE.fullmatch(value)
        assert figures, value
        fps, round_ms, peak = (float(figures[k]) for k in ("fps", "round", "peak"))
        assert all(math.isfinite(x) and x > 0 for x in (fps, round_ms, peak)), value
        assert figures["people"] == "2"  # each camera's frame reaches its host results with its people
        # One timed round of two frames: the aggregate rate counts both cameras' frames.
        assert fps == pytest.approx(2 / (round_ms / 1e3), rel=0.02), value


def test_parity_rows_fail_where_the_recording_differs(tmp_path):
    """The script's own comparisons (the engine parity tests cover the engine): two frames of
    the base fixture with its recorded K and one track id altered."""
    fx = dict(load_fixture("h3r_tiny_base"))
    fx["preprocess"] = dict(fx["preprocess"], raw_frames_uint8=fx["preprocess"]["raw_frames_uint8"][:2])
    K = fx["post"]["K"].clone()
    K[1, 0, 0] += 1.0  # a focal 1 px off: far beyond 1e-4 + 1e-4 |f|
    fx["post"] = dict(fx["post"], K=K)
    fx["outputs"] = [dict(fx["outputs"][0], smpl_id=fx["outputs"][0]["smpl_id"] + 1), *fx["outputs"][1:]]
    torch.save(fx, tmp_path / "altered.pt")

    rows = {check: (value, verdict) for check, value, verdict in gpu_check.parity_rows(tmp_path / "altered.pt", "cpu")}
    assert rows["parity altered: raw outputs"][1] == "PASS"
    assert rows["parity altered: cameras, K, world points, conf"][1] == "FAIL"
    assert rows["parity altered: detections and track ids"] == ("differ", "FAIL")


def test_without_cuda_it_says_so_and_succeeds():
    # CUDA hidden, so this checks the exit on a GPU machine too; no parity fixture and no
    # variant, so a broken device check could not start a full run either.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(SCRIPT), "--parity", "--variants"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA device" in done.stdout and "\ncheck" not in done.stdout


def test_a_missing_fixture_is_reported_as_skipped():
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--parity", "not_a_fixture", "--variants",
                           "--camera-variants"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    table = parse_table(done.stdout.split("\n\n")[-1].strip())
    assert table == [("parity not_a_fixture", "SKIP", f"fixture not found at {FIXTURES_DIR / 'not_a_fixture.pt'}")]
