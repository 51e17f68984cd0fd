"""pip metadata for using h3r_ros's model and engine without a ROS 2 build.

The ROS 2 package (messages, launch and config files, the node executable) is built with
colcon from package.xml / CMakeLists.txt; `pip install .` installs only the pure-Python
library, for offline use of the model and engine (``h3r_ros.model``, ``h3r_ros.engine``).
"""

from setuptools import find_packages, setup

setup(
    name="h3r_ros",
    version="0.1.0",
    description="Human3R (online SMPL-X humans, scene and camera from one camera) for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["h3r_ros", "h3r_ros.*"]),
    install_requires=[
        "torch>=2.4",
        "numpy>=1.26",
        "pillow>=10",
        "smplx>=0.1.28",
        "safetensors>=0.4",
        "opencv-python-headless>=4.8",
    ],
)
