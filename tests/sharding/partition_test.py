"""Runs tests/sharding/partition_devices.py on 8 simulated CPU devices in a child process."""

import pathlib

from tests import multidevice


def test_partition_on_8_devices():
    multidevice.run_on_devices(pathlib.Path(__file__).with_name("partition_devices.py"), timeout=900.0)
