"""Subscribe to every output of the node and write it to an MCAP rosbag2 with ``rosbags``.

Messages arrive through rclpy; ``serialize_message`` gives their CDR bytes, which is what
rosbag2 stores. The bag's connections carry the message definitions from a rosbags type
store (ROS 2 standard types plus this package's msg/*.msg), so any rosbag2 / MCAP reader
can decode the package's own messages without it being installed.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Path as PathMsg
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from h3r_ros.msg import HumanArray

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # without tf2 the node publishes no /tf (h3r_ros.ros.node)
    TFMessage = None

PACKAGE = "h3r_ros"


@dataclass(frozen=True)
class Topic:
    name: str
    msg_class: type
    type_name: str  # rosbag2 type name
    latched: bool = False  # reliable + transient local (last message kept for late joiners)
    depth: int = 10


# Every output of the node (relative names resolve in the root namespace).
OUTPUTS = (
    Topic("/humans", HumanArray, "h3r_ros/msg/HumanArray"),
    Topic("/cloud", PointCloud2, "sensor_msgs/msg/PointCloud2"),
    Topic("/map_cloud", PointCloud2, "sensor_msgs/msg/PointCloud2", latched=True, depth=1),
    Topic("/markers", MarkerArray, "visualization_msgs/msg/MarkerArray"),
    Topic("/camera_path", PathMsg, "nav_msgs/msg/Path"),
    Topic("/depth/image", Image, "sensor_msgs/msg/Image"),
    Topic("/depth/camera_info", CameraInfo, "sensor_msgs/msg/CameraInfo"),
    Topic("/estimated_camera_info", CameraInfo, "sensor_msgs/msg/CameraInfo"),
    *(() if TFMessage is None else (
        Topic("/tf", TFMessage, "tf2_msgs/msg/TFMessage", depth=100),
        Topic("/tf_static", TFMessage, "tf2_msgs/msg/TFMessage", latched=True, depth=1),
    )),
    Topic("/diagnostics", DiagnosticArray, "diagnostic_msgs/msg/DiagnosticArray"),
)
# What the demo itself publishes, written to the bag so it replays on its own.
INPUTS = (
    Topic("/image", Image, "sensor_msgs/msg/Image"),
    Topic("/camera_info", CameraInfo, "sensor_msgs/msg/CameraInfo"),
)


def message_dir() -> Path:
    """The package's msg/ folder: the source checkout's, else the installed share folder."""
    source = Path(__file__).resolve().parents[2] / "msg"
    if source.is_dir():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE)) / "msg"


def bag_typestore():
    """rosbags type store of the ROS 2 release the wheels come from plus h3r_ros/msg/*."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(message_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def qos_profile(topic: Topic) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=topic.depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if topic.latched else DurabilityPolicy.VOLATILE,
    )


def _bag_qos(topic: Topic) -> Qos:
    """The offered QoS stored in the bag, so `ros2 bag play` re-latches the map and /tf_static."""
    never = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        topic.depth,
        QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL if topic.latched else QosDurability.VOLATILE,
        never,
        never,
        QosLiveliness.AUTOMATIC,
        never,
        False,
    )


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _header_stamp(msg) -> int | None:
    """The message's source-image stamp, where it has one."""
    if hasattr(msg, "header"):
        return stamp_ns(msg.header.stamp)
    if TFMessage is not None and isinstance(msg, TFMessage) and msg.transforms:
        return stamp_ns(msg.transforms[0].header.stamp)
    if isinstance(msg, MarkerArray) and msg.markers:
        return stamp_ns(msg.markers[0].header.stamp)
    return None


class Recorder:
    """Writes every output (and the demo's inputs) to ``bag_dir`` and indexes arrivals by stamp."""

    def __init__(self, node, bag_dir: Path):
        self._lock = threading.Condition()
        self._closed = False
        self._writer = Writer(bag_dir, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        store = bag_typestore()
        self._connections = {
            t.name: self._writer.add_connection(t.name, t.type_name, typestore=store, offered_qos_profiles=[_bag_qos(t)])
            for t in OUTPUTS + INPUTS
        }
        self.counts: dict[str, int] = defaultdict(int)
        self.latest: dict[str, object] = {}
        self.humans: list[HumanArray] = []
        self.clouds: list[PointCloud2] = []
        self.diagnostics: list[DiagnosticArray] = []
        # (topic, stamp ns) -> receive time ns, for pacing and end-to-end latency.
        self.arrivals: dict[tuple[str, int], int] = {}
        self._subscriptions = [
            node.create_subscription(t.msg_class, t.name, self._callback(t.name), qos_profile(t)) for t in OUTPUTS
        ]

    def _callback(self, topic: str):
        def on_message(msg):
            received = time.time_ns()
            data = serialize_message(msg)
            stamp = _header_stamp(msg)
            with self._lock:
                if self._closed:  # a late message during shutdown
                    return
                self._writer.write(self._connections[topic], received, data)
                self.counts[topic] += 1
                self.latest[topic] = msg
                if topic == "/humans":
                    self.humans.append(msg)
                elif topic == "/cloud":
                    self.clouds.append(msg)
                elif topic == "/diagnostics":
                    self.diagnostics.append(msg)
                if stamp is not None:
                    self.arrivals.setdefault((topic, stamp), received)
                self._lock.notify_all()

        return on_message

    def write_input(self, topic: str, msg) -> None:
        with self._lock:
            self._writer.write(self._connections[topic], time.time_ns(), serialize_message(msg))

    def wait_for(self, topic: str, stamp: int, timeout: float) -> int | None:
        """Receive time of ``topic`` with header stamp ``stamp``, waiting up to ``timeout`` s."""
        with self._lock:
            self._lock.wait_for(lambda: (topic, stamp) in self.arrivals, timeout)
            return self.arrivals.get((topic, stamp))

    def wait_count(self, topic: str, count: int, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.counts[topic] >= count, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._writer.close()
