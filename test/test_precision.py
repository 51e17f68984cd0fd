"""dtype 'auto': bfloat16 exactly where the hardware computes it natively."""

import re
from pathlib import Path

import pytest
import torch

from h3r_ros.engine.precision import cpu_bf16_capability, resolve_precision


def _cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    if match is None:
        pytest.skip("no x86 /proc/cpuinfo flags on this machine")
    return set(match.group(1).split())


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    native = bool(_cpuinfo_flags() & {"amx_bf16", "avx512_bf16"})
    chosen = resolve_precision("auto", "cpu")
    assert chosen.dtype == ("bfloat16" if native else "float32")
    assert chosen.reason.startswith("auto: ") and ("native" if native else "emulated") in chosen.reason


@pytest.mark.parametrize("limit", ["AVX2", "avx512_core"])
def test_an_isa_limit_below_bf16_means_emulated(monkeypatch, limit):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    native, reason = cpu_bf16_capability()
    assert not native and "limit" in reason
    assert resolve_precision("auto", "cpu").dtype == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert cpu_bf16_capability()[0]


def test_without_bf16_units_auto_is_float32_and_forcing_bf16_warns(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cpu").dtype == "float32"
    forced = resolve_precision("bfloat16", "cpu")
    assert forced.dtype == "bfloat16" and "slow" in forced.reason
    assert resolve_precision("float32", "cpu").dtype == "float32"


def test_cuda_needs_compute_capability_8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d: "GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d: (7, 5))
    assert resolve_precision("auto", torch.device("cuda:0")).dtype == "float32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d: (9, 0))
    assert resolve_precision("auto", torch.device("cuda:0")).dtype == "bfloat16"


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_precision("float16", "cpu")
