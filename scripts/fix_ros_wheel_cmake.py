"""Repair the ROS 2 PyPI wheels' exported CMake files for this interpreter.

The wheels' ``*__rosidl_generator_pyExport.cmake`` files name the include
directories of the machine that built the wheels (its Python headers and its
numpy headers). CMake refuses imported targets with non-existent include paths,
so message packages cannot be built against the wheels until those paths point
at this environment's Python and numpy headers. Idempotent.
"""

import re
import sys
import sysconfig
from pathlib import Path

import numpy

INCLUDE_LINE = re.compile(r'(INTERFACE_INCLUDE_DIRECTORIES\s+")([^"]*)(")')


def fixed_dirs(dirs: str, python_include: str, numpy_include: str) -> str:
    out = []
    for entry in dirs.split(";"):
        if entry.endswith("numpy/_core/include") or entry.endswith("numpy/core/include"):
            entry = numpy_include
        elif re.search(r"/include/python3\.\d+$", entry):
            entry = python_include
        out.append(entry)
    return ";".join(out)


def main(prefix: str) -> int:
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = 0
    for path in Path(prefix, "share").glob("*/cmake/*__rosidl_generator_pyExport.cmake"):
        text = path.read_text()
        new = INCLUDE_LINE.sub(
            lambda m: m.group(1) + fixed_dirs(m.group(2), python_include, numpy_include) + m.group(3),
            text,
        )
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"fix_ros_wheel_cmake: {changed} file(s) updated under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
