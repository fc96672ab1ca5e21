"""Test-session set-up: quiet TensorFlow, two logical CPUs for tf.distribute tests, the Fashion-MNIST marker.

Tests that read Debian's real Fashion-MNIST files (``apt-get install dataset-fashion-mnist``, which
``scripts/setup.sh`` does) are marked ``@pytest.mark.needs_fmnist`` and skipped where the files are absent;
a test that needs their folder takes the ``fmnist_dir`` fixture.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Logical devices must be configured before TensorFlow initialises its
# runtime, so this runs at import time, before any test touches a tensor.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
except RuntimeError:  # already initialised (e.g. imported twice): keep what exists
    pass


FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def pytest_configure(config):
    config.addinivalue_line("markers", f"needs_fmnist: reads the real Fashion-MNIST in {FMNIST_DIR} (Debian's "
                                       "dataset-fashion-mnist); skipped where it is not installed")


def pytest_collection_modifyitems(config, items):
    if os.path.isdir(FMNIST_DIR):
        return
    skip = pytest.mark.skip(reason=f"{FMNIST_DIR} is absent: install Debian's package dataset-fashion-mnist")
    for item in items:
        if "needs_fmnist" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fmnist_dir(request):
    """The folder of the real Fashion-MNIST files; only for tests marked ``needs_fmnist``."""
    assert request.node.get_closest_marker("needs_fmnist"), "mark the test @pytest.mark.needs_fmnist"
    return FMNIST_DIR


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def floatx():
    """Sets ``keras.config.floatx`` for one test and restores it afterwards."""
    import keras

    previous = keras.config.floatx()
    yield keras.config.set_floatx
    keras.config.set_floatx(previous)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Several strategies in one process can hand out clashing collective-op
    instance keys (a later all-reduce then fails with a shape mismatch), so
    every test shares this one.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest configures two logical CPUs"
    return tf.distribute.MirroredStrategy(devices)
