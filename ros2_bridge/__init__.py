"""ROS 2 nodes around the sandbox's policy and simulator (optional extra: ``pip install -e '.[ros2]'``)."""
