"""The bridge's own ROS 2 interface, ``vla_sandbox_interfaces/action/ExecuteInstruction``,
generated with the rosidl wheels from PyPI (no system ROS, no colcon).

``load_action()`` returns the action type. The first call (or ``python -m
ros2_bridge.interfaces``) runs CMake with ``rosidl_generate_interfaces`` on
``ros2_bridge/action/ExecuteInstruction.action`` into a cache directory keyed by the
definition and the Python environment (about 20 s on 2 cores; needs cmake and a C/C++
compiler); later calls only load it. Two quirks of the pip-installed ROS are handled here:

- ament finds generators through ``AMENT_PREFIX_PATH``, which nothing sets in a venv;
- the wheels' exported CMake targets name the include directories of the machine that built
  them (``/opt/python/...``); the generated CMakeLists points them at this interpreter's.

The generated libraries are not on ``LD_LIBRARY_PATH`` (the process has started already), so
they are loaded by absolute path first; the dynamic loader then resolves the Python
extensions and rosidl's type-support lookup against them by soname.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

PACKAGE = "vla_sandbox_interfaces"
ACTION_FILE = Path(__file__).resolve().parent / "action" / "ExecuteInstruction.action"
# Load order matters: each library links against the ones before it.
_LIBRARIES = (
    "rosidl_generator_c",
    "rosidl_typesupport_c",
    "rosidl_typesupport_fastrtps_c",
    "rosidl_typesupport_introspection_c",
    "rosidl_typesupport_cpp",
    "rosidl_typesupport_fastrtps_cpp",
    "rosidl_typesupport_introspection_cpp",
    "rosidl_generator_py",
)

_PACKAGE_XML = f"""<?xml version="1.0"?>
<package format="3">
  <name>{PACKAGE}</name>
  <version>0.1.0</version>
  <description>Interfaces of the VLA sandbox ROS 2 bridge</description>
  <maintainer email="vla-sandbox@example.com">VLA sandbox</maintainer>
  <license>MIT</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>action_msgs</depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""

_CMAKELISTS = f"""cmake_minimum_required(VERSION 3.16)
project({PACKAGE})
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
# The wheels' exported targets carry the include paths of their build machine: repoint them.
foreach(dep action_msgs builtin_interfaces unique_identifier_msgs service_msgs)
  find_package(${{dep}} REQUIRED)
  if(TARGET ${{dep}}::${{dep}}__rosidl_generator_py)
    set_target_properties(${{dep}}::${{dep}}__rosidl_generator_py PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${{Python3_INCLUDE_DIRS}};${{Python3_NumPy_INCLUDE_DIRS}}")
  endif()
endforeach()
rosidl_generate_interfaces(${{PROJECT_NAME}} "action/ExecuteInstruction.action" DEPENDENCIES action_msgs)
ament_package()
"""


class InterfaceBuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where the generated package lives: one directory per definition and environment."""
    key = hashlib.sha256(
        "\n".join([ACTION_FILE.read_text(), _CMAKELISTS, _PACKAGE_XML, sys.prefix, sys.version]).encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("VLA_ROS2_INTERFACES_DIR", Path.home() / ".cache" / "vla-sandbox" / "ros2-interfaces"))
    return root / key


def build(verbose: bool = False) -> Path:
    """Generate and compile the interface package (once; a file lock guards parallel callers)."""
    root = cache_dir()
    install = root / "install"
    if (install / ".complete").exists():
        return install
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (install / ".complete").exists():  # another process built it while we waited
            return install
        source = root / "src"
        (source / "action").mkdir(parents=True, exist_ok=True)
        (source / "action" / ACTION_FILE.name).write_text(ACTION_FILE.read_text())
        (source / "package.xml").write_text(_PACKAGE_XML)
        (source / "CMakeLists.txt").write_text(_CMAKELISTS)
        env = {
            **os.environ,
            "AMENT_PREFIX_PATH": sys.prefix,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        steps = [
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(root / "build"),
                f"-DCMAKE_PREFIX_PATH={sys.prefix}",
                f"-DCMAKE_INSTALL_PREFIX={install}",
                f"-DPython3_EXECUTABLE={sys.executable}",
                "-DBUILD_TESTING=OFF",
            ],
            ["cmake", "--build", str(root / "build"), "-j", str(os.cpu_count() or 1)],
            ["cmake", "--install", str(root / "build")],
        ]
        for command in steps:
            try:
                done = subprocess.run(command, env=env, capture_output=not verbose, text=True)
            except FileNotFoundError:
                raise InterfaceBuildError(
                    "building the ROS 2 action interface needs cmake and a C/C++ compiler on PATH "
                    "(e.g. apt-get install cmake g++)"
                ) from None
            if done.returncode != 0:
                log = ((done.stdout or "") + (done.stderr or ""))[-4000:]
                raise InterfaceBuildError(f"generating {PACKAGE} failed at `{' '.join(command[:3])}`:\n{log}")
        (install / ".complete").write_text("ok\n")
    return install


def load_action():
    """The ``ExecuteInstruction`` action type (built on first use)."""
    install = build()
    for name in _LIBRARIES:
        ctypes.CDLL(str(install / "lib" / f"lib{PACKAGE}__{name}.so"), mode=ctypes.RTLD_GLOBAL)
    python_dir = install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not python_dir.is_dir():  # some CMake setups install into a purelib-like path instead
        python_dir = install / Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    site.addsitedir(str(python_dir))  # the generated package joins the import path as a site directory
    from vla_sandbox_interfaces.action import ExecuteInstruction

    return ExecuteInstruction


if __name__ == "__main__":
    print(f"built {PACKAGE} into {build(verbose='-v' in sys.argv)}")
