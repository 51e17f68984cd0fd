"""Choosing the inference number format from what the hardware computes natively.

bfloat16 pays off only where matrix units compute it (CPU: AMX or AVX512-BF16; CUDA: compute
capability 8.0 and later, i.e. Ampere onwards). Elsewhere PyTorch emulates it in software:
more than 10x slower than float32 on an AVX2-only CPU, with other rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")

# oneDNN ISA names from its documentation, in increasing order; a limit below the first
# bf16-capable level (avx512_core_bf16) switches native bf16 off (DNNL_ is the older prefix).
_ONEDNN_ISAS = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
                "avx512_core_bf16", "avx10_1_512", "avx512_core_fp16", "avx512_core_amx", "avx10_1_512_amx",
                "avx512_core_amx_fp16", "avx10_1_512_amx_fp16", "default", "all")
_FIRST_BF16_ISA = _ONEDNN_ISAS.index("avx512_core_bf16")


@dataclass(frozen=True)
class Precision:
    dtype: str  # "float32" or "bfloat16"
    reason: str  # why, in words, for the log and /diagnostics


def _onednn_limit_allows_bf16() -> bool:
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        limit = os.environ.get(var, "").strip().lower()
        if limit:
            return limit in _ONEDNN_ISAS and _ONEDNN_ISAS.index(limit) >= _FIRST_BF16_ISA
    return True


def cpu_bf16_capability() -> tuple[bool, str]:
    """(native, description) for this CPU's bfloat16 matrix arithmetic."""
    amx = torch.cpu._is_amx_tile_supported()
    avx512_bf16 = torch.cpu._is_avx512_bf16_supported()
    kernels = torch.backends.cpu.get_cpu_capability()
    units = [name for name, present in (("AMX", amx), ("AVX512-BF16", avx512_bf16)) if present]
    if not units:
        return False, f"CPU without AMX or AVX512-BF16 (kernels: {kernels}): bfloat16 is emulated"
    if not _onednn_limit_allows_bf16():
        return False, f"CPU has {'+'.join(units)} but the oneDNN ISA limit excludes it: bfloat16 is emulated"
    return True, f"CPU with {'+'.join(units)} (kernels: {kernels}): bfloat16 is native"


def cuda_bf16_capability(device: torch.device) -> tuple[bool, str]:
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if (major, minor) >= (8, 0):
        return True, f"{name} (compute capability {major}.{minor}): bfloat16 is native"
    return False, f"{name} (compute capability {major}.{minor} < 8.0): bfloat16 is emulated"


def bf16_capability(device: torch.device | str) -> tuple[bool, str]:
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_bf16_capability(device)
    return cpu_bf16_capability()


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """The dtype to run in for a requested choice ('auto', 'float32' or 'bfloat16')."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {requested!r}")
    native, capability = bf16_capability(device)
    if requested == "auto":
        return Precision("bfloat16" if native else "float32", f"auto: {capability}")
    note = "" if native or requested == "float32" else " (slow: expect >10x float32's time)"
    return Precision(requested, f"requested {requested}{note}; {capability}")


def result_deviation(results, reference) -> dict[str, float]:
    """How far one run's FrameResults are from a reference run's, worst frame: camera
    rotation (rad), camera centre / median scene distance, p99 of point error / point
    distance, focal (relative)."""
    worst = dict.fromkeys(("rotation", "centre", "points", "focal"), 0.0)
    for res, ref in zip(results, reference, strict=True):
        distance = np.linalg.norm(ref.points_cam, axis=-1)
        delta = res.cam_to_world[:3, :3] @ ref.cam_to_world[:3, :3].T
        values = (
            float(np.arccos(np.clip((np.trace(delta) - 1) / 2, -1.0, 1.0))),
            float(np.linalg.norm(res.cam_to_world[:3, 3] - ref.cam_to_world[:3, 3]) / np.median(distance)),
            float(np.quantile(np.linalg.norm(res.points_cam - ref.points_cam, axis=-1) / distance, 0.99)),
            float(abs(res.K[0, 0] / ref.K[0, 0] - 1)),
        )
        for key, value in zip(worst, values):
            worst[key] = max(worst[key], value)
    return worst
