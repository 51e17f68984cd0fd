"""The loopback-only DDS environment every test process (and the demo) runs with."""

import os
import xml.etree.ElementTree as ET

from h3r_ros.dds_env import loopback_env, loopback_profile

NS = {"dds": "http://www.eprosima.com"}


def test_this_process_runs_with_the_loopback_environment():
    """conftest applied it before rclpy was imported; subprocesses inherit it."""
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == str(loopback_profile())
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 100


def test_profile_allows_only_shared_memory_and_udp_on_lo():
    root = ET.parse(loopback_profile()).getroot()
    participant = root.find(".//dds:participant[@is_default_profile='true']", NS)
    assert participant.find(".//dds:useBuiltinTransports", NS).text.strip() == "false"
    used = {t.text.strip() for t in participant.findall(".//dds:userTransports/dds:transport_id", NS)}
    descriptors = {
        d.find("dds:transport_id", NS).text.strip(): d for d in root.findall(".//dds:transport_descriptor", NS)
    }
    assert used and used <= set(descriptors)
    for name in used:
        kind = descriptors[name].find("dds:type", NS).text.strip()
        assert kind in ("SHM", "UDPv4")
        if kind == "UDPv4":
            allowed = [i.get("name") for i in descriptors[name].findall(".//dds:allowlist/dds:interface", NS)]
            assert allowed == ["lo"]


def test_each_call_gets_a_log_dir_and_the_requested_domain():
    env = loopback_env(domain_id=42)
    assert env["ROS_DOMAIN_ID"] == "42"
    assert os.path.isdir(env["ROS_LOG_DIR"]) and env["ROS_LOG_DIR"] != loopback_env()["ROS_LOG_DIR"]
