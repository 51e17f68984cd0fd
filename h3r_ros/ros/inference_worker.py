"""Latest-frame hand-off between the executor and one inference thread.

The executor thread only drops messages into a one-element slot; the inference thread
takes the newest one when it is free. A message still waiting when a newer one arrives is
dropped (and counted by the caller), so the wait before inference never exceeds one
inference period whatever the camera rate. Reset requests travel through the same lock so
they are applied, in order, on the thread that owns the engine.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class InferenceWorker:
    def __init__(
        self,
        process: Callable[[Any], None],
        reset: Callable[[], None],
        on_error: Callable[[BaseException], None],
        name: str = "human3r_inference",
    ) -> None:
        """``process(item)`` handles one frame, ``reset()`` clears state between frames;
        both run on the worker thread. ``on_error`` receives their exceptions, after which
        the worker carries on with the next frame."""
        self._process = process
        self._reset = reset
        self._on_error = on_error
        self._name = name
        self._cond = threading.Condition()
        self._item: Any = None
        self._reset_requested = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Discard any waiting frame and join the thread (after the frame in progress), waiting
        at most ``timeout`` s; False if the frame was still running then (the daemon thread
        finishes it and exits on its own; ``wait`` joins it later)."""
        with self._cond:
            self._stopping = True
            self._item = None
            self._cond.notify_all()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Join a stopped thread, at most ``timeout`` s; True once it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, item: Any) -> bool:
        """Offer a frame; returns True if it replaced one that was still waiting (a drop)."""
        with self._cond:
            dropped = self._item is not None
            self._item = item
            self._cond.notify()
        return dropped

    def discard(self) -> bool:
        """Forget the waiting frame, if any; returns True if there was one."""
        with self._cond:
            dropped, self._item = self._item is not None, None
        return dropped

    def request_reset(self) -> None:
        """Run ``reset()`` before the next frame (a waiting frame stays and comes after it)."""
        with self._cond:
            self._reset_requested = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._reset_requested or self._item is not None)
                if self._stopping:
                    return
                reset, self._reset_requested = self._reset_requested, False
                item, self._item = (None, self._item) if reset else (self._item, None)
            try:
                if reset:
                    self._reset()
                else:
                    self._process(item)
            except Exception as error:  # noqa: BLE001 - one bad frame must not stop the node
                self._on_error(error)
