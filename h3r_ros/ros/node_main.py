"""Executable entry point: ``human3r_node`` or ``python -m h3r_ros.ros.node_main --ros-args ...``.

Spins the lifecycle node on a single-threaded executor (inference has its own thread) from
the start. With ``autostart`` the node configures and activates itself from a thread of its
own, so that while it loads (finding and checking the checkpoint, gigabytes of weights, an
optional compile warm-up) its lifecycle and parameter services and /diagnostics (state
``configuring`` and what is loading) keep answering; otherwise a lifecycle manager (launch,
``ros2 lifecycle set``) drives it.

SIGINT and SIGTERM are handled here rather than by rclpy: rclpy's handlers invalidate the
context first, after which the node's shutdown transition can no longer run (nor publish its
transition event). Here a signal only stops spinning; the node then goes through its shutdown
transition (joins the inference thread, frees the model) before rclpy shuts down. A signal
during the load means the node is never activated; if the load has not ended
LOAD_EXIT_TIMEOUT s later, the process ends without waiting for it. The process also ends
when the node is finalized through its lifecycle services.

Once that is done the process ends with ``os._exit``: the interpreter's own teardown with
PyTorch and the ROS libraries loaded takes 1-3 s on a small CPU and releases nothing the
shutdown did not already release, and ``ros2 launch`` escalates to SIGTERM after 5 s.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from h3r_ros.ros.node import Human3RNode

SPIN_PERIOD = 0.1  # s; how quickly a signal is noticed
LOAD_EXIT_TIMEOUT = 2.0  # s a signal during the load waits for it before the process ends without it


class Autostart(threading.Thread):
    """Configure, then activate unless a signal came meanwhile; off the executor's thread."""

    def __init__(self, node: Human3RNode, stop: threading.Event) -> None:
        super().__init__(name="human3r_autostart", daemon=True)
        self._node = node
        self._signalled = stop
        self._deciding = threading.Lock()  # held while deciding to activate, and while activating
        self._cancelled = False

    def run(self) -> None:
        node = self._node
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: configure failed; the node stays unconfigured "
                                    "(fix the parameters and configure it again)")
            return
        with self._deciding:
            if self._cancelled or self._signalled.is_set():
                node.get_logger().info("autostart: stopping, so the node is not activated")
                return
            node.trigger_activate()

    def cancel(self, timeout: float) -> bool:
        """No activation from now on; True once this thread has ended, at most ``timeout`` s later."""
        with self._deciding:
            self._cancelled = True
        self.join(timeout)
        return not self.is_alive()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)  # args None: sys.argv
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    node = Human3RNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    starter = None
    try:
        if node.get_parameter("autostart").value and not stop.is_set():
            starter = Autostart(node, stop)
            starter.start()
            # Serve no lifecycle request before configure has begun: 'unconfigured' then means it failed.
            while node.lifecycle_state == "unconfigured" and starter.is_alive():
                starter.join(0.001)
        # A node finalized through its lifecycle services has nothing left to do either.
        while not stop.is_set() and rclpy.ok() and node.lifecycle_state != "finalized":
            executor.spin_once(timeout_sec=SPIN_PERIOD)
    finally:
        if starter is not None and not starter.cancel(LOAD_EXIT_TIMEOUT):
            # Mid-transition the node can neither shut down nor be destroyed: the process ends
            # (run) and takes the load with it; nothing was activated.
            node.get_logger().warning(f"still loading {LOAD_EXIT_TIMEOUT:g} s after the signal: exiting "
                                      "without finishing the load (the node was not activated)")
        else:
            if node.lifecycle_state != "finalized":
                node.trigger_shutdown()
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
    return 0


def run() -> None:
    """``main`` as a process: exit right after the clean shutdown (see the module docstring)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
