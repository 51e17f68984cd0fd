"""What a node with several cameras and an ``output_frame`` publishes for all of them at once.

After each inference round, the cameras whose people were placed in output_frame hand their
tracks over (``Outputs.fusion_view``); ``engine.fusion.Fusion`` joins them, and this publishes
the fused people: the top-level ``humans`` (one entry per person, with the cameras that see
them), ``markers`` in output_frame under the fused ids, a TF frame per fused person
(``output_frame -> <body_frame_prefix><fused id>``, with ``publish_body_tf``), and the REP-155
body interface under the fused ids (``publish_hri_bodies``).
"""

from __future__ import annotations

import threading
from dataclasses import replace

from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from h3r_ros.engine.fusion import Fusion
from h3r_ros.engine.track_motion import LOST
from h3r_ros.msg import HumanArray
from h3r_ros.ros import conversions, hri_bodies
from h3r_ros.ros.markers import MarkerLifetime, TrackMarkers
from h3r_ros.ros.outputs import EVENT_QOS, TF_QOS, TFMessage


class FusedOutputs:
    def __init__(self, node, settings) -> None:
        self._node = node
        self._frame = settings.output_frame
        self._fusion = Fusion(timeout=settings.track_timeout)
        self._markers = TrackMarkers()
        self._lock = threading.Lock()  # as Outputs: nothing is published after close
        self._closed = False
        self._humans = node.create_lifecycle_publisher(HumanArray, "humans", EVENT_QOS)
        self._marker_pub = node.create_lifecycle_publisher(MarkerArray, "markers", EVENT_QOS)
        self._tf = None if TFMessage is None else node.create_lifecycle_publisher(TFMessage, "/tf", TF_QOS)
        self._hri = hri_bodies.HriBodies(node) if settings.publish_hri_bodies else None
        self._lifetime = MarkerLifetime()

    def publish(self, views, stamp, settings) -> None:
        """The fused people of one round: ``views`` are the cameras' ``fusion_view``s (camera
        order), ``stamp`` the newest of their image stamps (the message's)."""
        if not views:
            return
        with self._lock:
            if self._closed:
                return
            self._lifetime.tick()
            self._fusion.timeout = settings.track_timeout
            alive, ended = self._fusion.update(views)
            now = max(view.stamp for view in views)
            header = Header(stamp=stamp, frame_id=self._frame)
            seen = [t for t in alive if t.info.state != LOST]
            if self._humans.get_subscription_count() > 0:
                self._humans.publish(conversions.fused_humans_msg(
                    header, alive + ended, settings.publish_vertices, now))
            people = [replace(t.info.payload, track_id=t.info.track_id) for t in seen]
            if settings.publish_markers and self._marker_pub.get_subscription_count() > 0:
                lost = [t.info.track_id for t in alive if t.info.state == LOST]
                self._marker_pub.publish(self._markers.update(header, people, None, self._lifetime.seconds(), keep=lost))
            prefix = hri_bodies.FRAME_PREFIX if self._hri is not None else settings.body_frame_prefix
            if self._tf is not None and (self._hri is not None or settings.publish_body_tf):
                transforms = [conversions.transform_msg(conversions.body_to_world(p), self._frame,
                                                        f"{prefix}{p.track_id}", stamp)
                              for p in people if p.joints_world is not None]
                if transforms:
                    self._tf.publish(TFMessage(transforms=transforms))
            if self._hri is not None:
                self._hri.publish(header, [t.info for t in seen], [t.info for t in ended])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for publisher in (self._humans, self._marker_pub, self._tf):
                if publisher is not None:
                    self._node.destroy_lifecycle_publisher(publisher)
            if self._hri is not None:
                self._hri.close()
                self._hri = None
