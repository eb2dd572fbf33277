import importlib.util
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _two_logical_cpus():
    """Split the CPU in two devices, for the MirroredStrategy test.

    Must run before TensorFlow initialises its runtime.
    """
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu,
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )


if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    _two_logical_cpus()

import keras  # noqa: E402
import pytest  # noqa: E402

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def load_example(name):
    """Import examples/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from float32 and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """The README's main job, run once: (exit code, output directory)."""
    out_dir = tmp_path_factory.mktemp("quickstart")
    keras.utils.set_random_seed(1234)
    code = load_example("quickstart").main(["--out-dir", str(out_dir)])
    return code, out_dir
