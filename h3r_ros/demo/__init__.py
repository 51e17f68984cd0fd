"""End-to-end demo: synthetic or recorded frames through the ROS 2 node into an MCAP bag."""
