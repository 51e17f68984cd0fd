"""Running one load in a child process with an address-space limit, and measuring it.

A bomb must fail its test, not the machine: each load runs in a child whose address space may
grow by at most ``HEADROOM`` bytes, and reports the exception it ended with, the growth of
its resident memory at the peak, and its duration. Children are forked from a forkserver that
imported torch and the loaders once (forking costs milliseconds, importing torch seconds);
the forkserver has run no computation, so no thread pool is forked.
"""

from __future__ import annotations

import importlib
import multiprocessing
import resource
import time
from dataclasses import dataclass
from pathlib import Path

HEADROOM = 1 << 30  # bytes of address space a load may add
TIMEOUT_S = 10.0

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "h3r_ros.model.checkpoint", "h3r_ros.engine.body_model", __name__])


@dataclass
class Outcome:
    errors: tuple[str, ...]  # the exception's class and its bases by name; () if it returned
    message: str
    peak_bytes: int  # resident memory the load added at its peak
    seconds: float


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _child(connection, target: str, args: tuple) -> None:
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name)
    limit = _status("VmSize") + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    baseline = _status("VmRSS")
    start = time.monotonic()
    try:
        function(*args)
        errors, message = (), ""
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which judges it
        errors, message = tuple(c.__name__ for c in type(exc).__mro__), str(exc)[:4000]
    seconds = time.monotonic() - start
    connection.send(Outcome(errors, message, _status("VmHWM") - baseline, seconds))


def run_limited(function, *args, timeout: float = TIMEOUT_S) -> Outcome:
    """Call ``function(*args)`` (a module-level function) in a limited child."""
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child, args=(sender, f"{function.__module__}:{function.__qualname__}", args))
    child.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            return receiver.recv()
        return Outcome(("Timeout",), f"no answer within {timeout} s", -1, timeout)
    except EOFError:
        child.join()
        return Outcome(("Died",), f"the child ended with exit code {child.exitcode}", -1, -1.0)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
