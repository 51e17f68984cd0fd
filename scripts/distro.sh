# Sourced by the scripts: which ROS 2 distribution's wheels, which lock file, which venv.
# H3R_ROS_DISTRO=kilted (default) or jazzy; H3R_VENV overrides the venv path.
H3R_ROS_DISTRO="${H3R_ROS_DISTRO:-kilted}"
case "$H3R_ROS_DISTRO" in
  kilted) H3R_LOCK=requirements.lock; _h3r_venv="$ROOT/.venv" ;;
  jazzy) H3R_LOCK=requirements-jazzy.lock; _h3r_venv="$ROOT/.venv-jazzy" ;;
  *) echo "error: H3R_ROS_DISTRO must be kilted or jazzy (PyPI has no wheels for others), got '$H3R_ROS_DISTRO'" >&2; exit 1 ;;
esac
H3R_VENV="${H3R_VENV:-$_h3r_venv}"
export H3R_ROS_DISTRO H3R_VENV
