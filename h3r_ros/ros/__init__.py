"""ROS 2 interface of h3r_ros: the Human3R lifecycle node and its message conversions."""
