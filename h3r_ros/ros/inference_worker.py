"""Latest-frame hand-off between the executor and one inference thread, per camera.

The executor thread only drops messages into one slot per camera (key); the inference thread
serves rounds: each round takes the newest message of every camera that has one, so no
camera waits behind another however fast that one publishes, and the wait before inference
never exceeds one round whatever the camera rates. A message still waiting when a newer one
of its camera arrives is dropped (and counted by the caller). Reset requests travel through
the same lock, so they are applied, in order, on the thread that owns the engines, before the
frames that were waiting with them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable

ALL = None  # request_reset's key for every camera


class InferenceWorker:
    def __init__(
        self,
        process_round: Callable[[dict[Hashable, Any]], None],
        reset: Callable[[Hashable | None], None],
        on_error: Callable[[BaseException], None],
        name: str = "human3r_inference",
    ) -> None:
        """``process_round(items)`` handles one round (camera key -> its newest item),
        ``reset(key)`` clears one camera's state (every
        camera's for ALL); both run on the worker thread. ``on_error`` receives what escapes
        them, after which the worker carries on with the next round."""
        self._process_round = process_round
        self._reset = reset
        self._on_error = on_error
        self._name = name
        self._cond = threading.Condition()
        self._items: dict[Hashable, Any] = {}
        self._resets: list[Hashable | None] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Discard the waiting frames and join the thread (after the round in progress), waiting
        at most ``timeout`` s; False if the round was still running then (the daemon thread
        finishes it and exits on its own; ``wait`` joins it later)."""
        with self._cond:
            self._stopping = True
            self._items.clear()
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

    def submit(self, item: Any, key: Hashable = "") -> bool:
        """Offer camera ``key``'s newest frame; True if it replaced one still waiting (a drop)."""
        with self._cond:
            dropped = self._items.pop(key, None) is not None
            self._items[key] = item
            self._cond.notify()
        return dropped

    def discard(self) -> bool:
        """Forget the waiting frames, if any; True if there was one."""
        with self._cond:
            dropped = bool(self._items)
            self._items.clear()
        return dropped

    def request_reset(self, key: Hashable | None = ALL) -> None:
        """Run ``reset(key)`` before the next round (waiting frames stay and come after it)."""
        with self._cond:
            self._resets.append(key)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._resets or self._items)
                if self._stopping:
                    return
                resets, self._resets = self._resets, []
                items, self._items = self._items, {}
            try:
                for key in resets:
                    self._reset(key)
                if items:
                    self._process_round(items)
            except Exception as error:  # noqa: BLE001 - one bad round must not stop the node
                self._on_error(error)
