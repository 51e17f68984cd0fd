"""Counters the node updates from two threads, a snapshot of its state, and their /diagnostics
message."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
import math
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

# Event counters, both per reporting window and since activation.
RECEIVED = "received"  # messages that arrived (valid or not)
PROCESSED = "processed"  # frames that went through the engine and were published
DROPPED = "dropped"  # valid frames replaced by a newer one before inference started
STALE = "stale"  # frames skipped because older than max_image_age
BAD = "bad_messages"  # invalid messages (layout, size, stamp, frame id)
OUT_OF_ORDER = "out_of_order"  # frames stamped slightly before the previous one
BAD_INFO = "bad_camera_info"  # camera_info messages that failed their checks
ERRORS = "errors"  # exceptions while processing a frame
NO_TRANSFORM = "no_output_transform"  # images whose people tf2 could not place in output_frame
NON_FINITE = "non_finite"  # frames whose outputs held NaN or Inf: nothing of them was published
COUNTERS = (RECEIVED, PROCESSED, DROPPED, STALE, BAD, OUT_OF_ORDER, BAD_INFO, ERRORS, NO_TRANSFORM, NON_FINITE)
NO_INPUT_WARNING = 3.0  # s without any image before an active node reports a warning


@dataclass
class Window:
    """What happened since the previous report."""

    seconds: float
    counts: dict[str, int]
    totals: dict[str, int]
    max_age: float | None  # largest (publish time - stamp) of the processed frames, s
    last_age: float | None
    stage_times: dict[str, float]  # stage -> mean seconds per processed frame
    people: int | None  # people in the last processed frame
    since_input: float | None  # s since the last image arrived; None: none yet
    last_error: str = ""
    last_non_finite: str = ""  # which output of the last non-finite frame held NaN or Inf


class NodeStats:
    """Thread-safe event counts and latencies, read out once per diagnostics period."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        """Counting starts again (on activation)."""
        with self._lock:
            self._totals = dict.fromkeys(COUNTERS, 0)
            self._start_window(time.monotonic())
            self._people: int | None = None
            self._last_input: float | None = None
            self._last_error = ""
            self._last_non_finite = ""

    def _start_window(self, now: float) -> None:
        self._window_start = now
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._ages: list[float] = []
        self._stage_sums: dict[str, float] = defaultdict(float)

    def count(self, counter: str) -> None:
        with self._lock:
            self._counts[counter] += 1
            self._totals[counter] += 1
            if counter == RECEIVED:
                self._last_input = time.monotonic()

    def error(self, text: str) -> None:
        with self._lock:
            self._counts[ERRORS] += 1
            self._totals[ERRORS] += 1
            self._last_error = text

    def non_finite(self, stage: str) -> None:
        """A frame dropped because its ``stage`` output ('camera pose', 'points', 'people') was not finite."""
        with self._lock:
            self._counts[NON_FINITE] += 1
            self._totals[NON_FINITE] += 1
            self._last_non_finite = stage

    def processed(self, age: float, stage_times: dict[str, float], people: int) -> None:
        """One published frame: its stamp age at publication and the engine's stage times."""
        with self._lock:
            self._counts[PROCESSED] += 1
            self._totals[PROCESSED] += 1
            self._ages.append(age)
            for stage, seconds in stage_times.items():
                self._stage_sums[stage] += seconds
            self._people = people

    def take_window(self) -> Window:
        """The counts since the previous call, which starts a new window."""
        now = time.monotonic()
        with self._lock:
            n = max(self._counts[PROCESSED], 1)
            window = Window(
                seconds=max(now - self._window_start, 1e-9),
                counts=dict(self._counts),
                totals=dict(self._totals),
                max_age=max(self._ages) if self._ages else None,
                last_age=self._ages[-1] if self._ages else None,
                stage_times={stage: s / n for stage, s in self._stage_sums.items()},
                people=self._people,
                since_input=None if self._last_input is None else now - self._last_input,
                last_error=self._last_error,
                last_non_finite=self._last_non_finite,
            )
            self._start_window(now)
        return window


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000.0 * seconds:.1f}"


def diagnostics_msg(stamp, name: str, hardware_id: str, window: Window, state: dict[str, str],
                    idle_reason: str = "", node_error: str = "") -> DiagnosticArray:
    """One DiagnosticStatus: rates, drops, latency, stage times, plus ``state`` (device,
    model, lifecycle state...). ``idle_reason`` (inactive, disabled) says why no input is
    expected; otherwise silence is a warning. ``node_error`` (e.g. why configure failed)
    makes the status an error."""
    c, seconds = window.counts, window.seconds
    input_hz, processed_hz = c[RECEIVED] / seconds, c[PROCESSED] / seconds
    if node_error:
        level, message = DiagnosticStatus.ERROR, node_error
    elif c[ERRORS]:
        level, message = DiagnosticStatus.ERROR, f"{c[ERRORS]} frame(s) failed: {window.last_error}"
    elif idle_reason:
        level, message = DiagnosticStatus.OK, idle_reason
    elif window.since_input is None:
        level, message = DiagnosticStatus.WARN, "no images received yet"
    elif window.since_input > NO_INPUT_WARNING:
        level, message = DiagnosticStatus.WARN, f"no images received for {window.since_input:.0f} s"
    elif c[NON_FINITE]:
        level = DiagnosticStatus.WARN
        message = f"{c[NON_FINITE]} frame(s) with non-finite {window.last_non_finite} dropped"
    elif c[BAD]:
        level, message = DiagnosticStatus.WARN, f"{c[BAD]} invalid image message(s) dropped"
    else:
        level = DiagnosticStatus.OK
        message = f"processing {processed_hz:.2f} Hz of {input_hz:.2f} Hz input"
    values = {
        **state,
        "input rate (Hz)": f"{input_hz:.2f}",
        "processed rate (Hz)": f"{processed_hz:.2f}",
        "received messages (total)": str(window.totals[RECEIVED]),
        "dropped frames (window)": str(c[DROPPED]),
        "dropped frames (total)": str(window.totals[DROPPED]),
        "stale frames skipped (total)": str(window.totals[STALE]),
        "bad messages (total)": str(window.totals[BAD]),
        "out-of-order frames dropped (total)": str(window.totals[OUT_OF_ORDER]),
        "camera_info messages ignored (total)": str(window.totals[BAD_INFO]),
        "failed frames (total)": str(window.totals[ERRORS]),
        "images without the output_frame transform (total)": str(window.totals[NO_TRANSFORM]),
        "frames with non-finite outputs dropped (total)": str(window.totals[NON_FINITE]),
        "last non-finite output": window.last_non_finite or "none",
        "processed frames (total)": str(window.totals[PROCESSED]),
        "stamp age at publication, last (ms)": _ms(window.last_age),
        "stamp age at publication, max (ms)": _ms(window.max_age),
        "people in last frame": "n/a" if window.people is None else str(window.people),
    }
    for stage, mean in sorted(window.stage_times.items()):
        values[f"time {stage} (ms)"] = _ms(mean)
    status = DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


@dataclass(frozen=True)
class NodeState:
    """What the node reports besides its counters, taken in one go on the executor thread."""

    lifecycle_state: str  # 'unconfigured', 'configuring', 'inactive', 'active' or 'finalized'
    enabled: bool  # ~/enable
    last_error: str
    sizes: dict[str, int]  # every structure that grows with the run (each has a bound)
    model: str = "not loaded"
    precision: str = "n/a"
    hardware_id: str = "none"
    device_values: dict[str, str] = field(default_factory=dict)  # e.g. CUDA memory figures
    focal_estimated: float = math.nan  # px, model input
    focal_camera_info: float = math.nan
    tf: str = "n/a"  # what the node publishes on TF and why (outputs.Outputs.tf_status)
    loading: str = ""  # what configure is doing, while the state is 'configuring'
    input_values: dict[str, str] = field(default_factory=dict)  # rectification, processed frame size

    @property
    def idle_reason(self) -> str:
        """Why no input is expected, if it is not ('' while active and enabled)."""
        if self.lifecycle_state == "configuring":
            return f"configuring: {self.loading or 'starting'}"
        if self.lifecycle_state != "active":
            return f"{self.lifecycle_state}: not processing"
        return "" if self.enabled else "disabled through ~/enable"


def node_status(stamp, name: str, state: NodeState, window: Window) -> DiagnosticArray:
    """The node's /diagnostics message: ``state`` and the counters of ``window``. An
    unconfigured node with an error (e.g. why configure failed) reports it as an error."""
    values = {
        "lifecycle state": state.lifecycle_state,
        **({"loading": state.loading} if state.loading else {}),
        "last error": state.last_error or "none",
        **{key: str(value) for key, value in state.sizes.items()},
        "enabled": str(state.enabled).lower(),
        "model": state.model,
        "precision": state.precision,
        "TF": state.tf,
        "estimated focal (px, model input)": f"{state.focal_estimated:.1f}",
        "camera_info focal (px, model input)": f"{state.focal_camera_info:.1f}",
        **state.input_values,
        **state.device_values,
    }
    node_error = state.last_error if state.lifecycle_state == "unconfigured" else ""
    return diagnostics_msg(stamp, name, state.hardware_id, window, values, state.idle_reason, node_error)
