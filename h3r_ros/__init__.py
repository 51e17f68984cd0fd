"""h3r_ros: online human and scene reconstruction (Human3R) for ROS 2."""

# The generated message modules (h3r_ros.msg) are installed by colcon into the
# environment's site-packages; extend the package path so they are found when
# the Python sources are imported from a source checkout.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
