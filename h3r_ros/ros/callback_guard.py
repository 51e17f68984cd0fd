"""Callbacks that cannot stop the executor.

An exception escaping a subscription, service or timer callback would leave rclpy's spin and
end the process; wrapped here, it is reported with its traceback (rate-limited per callback)
and the executor keeps spinning. A service callback answers with success false.
"""

from __future__ import annotations

import functools
import math
import time
import traceback
from typing import Callable

Report = Callable[[str, str, bool], None]  # (text, traceback, log it now)


class RateLimit:
    """True at most once per ``period`` seconds (monotonic clock)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._last = -math.inf

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.period:
            return False
        self._last = now
        return True


def guarded(callback, report: Report, period: float):
    """``callback`` wrapped so that an exception goes to ``report`` instead of the executor."""
    name = getattr(getattr(callback, "func", callback), "__name__", repr(callback))  # a partial's function
    allow = RateLimit(period)  # per callback: rclpy's throttling is per call site

    @functools.wraps(callback)
    def wrapper(*args):
        try:
            return callback(*args)
        except Exception as exc:  # noqa: BLE001 - nothing may stop the executor
            report(f"{name} failed: {type(exc).__name__}: {exc}", traceback.format_exc(), allow())
            if len(args) == 2 and hasattr(args[1], "success"):  # (request, response)
                response = args[1]
                response.success = False
                if hasattr(response, "message"):
                    response.message = f"{type(exc).__name__}: {exc}"
                return response
            return None

    return wrapper
