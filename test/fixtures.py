"""Locating the reference fixtures that live beside the repository (../shared/fixtures)."""

import functools
import os
from pathlib import Path

import pytest

FIXTURES_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
REFERENCE_FIXTURES = ("h3r_tiny_base", "h3r_tiny_ttt3r", "h3r_tiny_reset3", "h3r_tiny_reset3_ttt3r")


def fixture_path(name: str) -> Path:
    """Path of a fixture file; skips the test when absent (fails instead under CI=true)."""
    path = FIXTURES_DIR / name
    if not path.exists():
        message = (
            f"reference fixture {name!r} not found at {path}: clone the repository next to "
            "the project's shared/ folder to run the parity tests"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.lru_cache(maxsize=4)
def load_fixture(name: str) -> dict:
    """Load one of the official-code reference recordings (``name`` without ``.pt``).

    Cached across tests: treat the returned tensors as read-only.
    """
    import torch

    return torch.load(fixture_path(name + ".pt"), weights_only=True, map_location="cpu")
