"""The GPU check script's CPU part runs without a GPU, so a run on a GPU machine only measures."""

import subprocess
import sys
from pathlib import Path

from fixtures import FIXTURES_DIR, fixture_path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_without_a_gpu_it_says_so_and_succeeds():
    done = _run()
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout


def test_parity_and_speed_rows_on_the_cpu():
    fixture_path("h3r_tiny_base.pt")
    done = _run("--device", "cpu", "--parity", "h3r_tiny_base", "missing_fixture", "--variants", "672S",
                "--dtypes", "float32", "--compile", "off", "--frames", "2", "--warmup", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.split("\ncheck")[1].splitlines()
    rows = {line.split("  ")[0].strip(): line for line in table[1:] if line.strip() and not line.startswith("(")}
    for check in ("raw outputs", "cameras, K, world points, conf", "detections and track ids"):
        assert " PASS " in rows[f"parity h3r_tiny_base: {check}"]
    assert " SKIP " in rows["parity missing_fixture"] and str(FIXTURES_DIR) in rows["parity missing_fixture"]
    assert "FPS median" in rows["speed 672S float32 eager"] and "2 people" in rows["speed 672S float32 eager"]
