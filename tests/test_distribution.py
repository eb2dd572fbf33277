"""Model parallelism: `keras_encoder.distribution.layout_map` shards the
attention and feed-forward kernels Megatron-style, and training under
`keras.distribution.ModelParallel` on 8 virtual CPU devices (JAX) gives
the weights one device gives."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

from keras_encoder import distribution

# The slow test runs its own JAX process; the others need keras.distribution
# in this one, which the torch backend lacks.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="keras.distribution has no torch implementation",
)
JOB = pathlib.Path(__file__).parent / "model_parallel_job.py"
COLUMN = (None, "model")  # output features split
ROW = ("model", None)  # input features split
EXPECTED = {
    "self_attention/query/kernel": COLUMN,
    "self_attention/key/kernel": COLUMN,
    "self_attention/value/kernel": COLUMN,
    "self_attention/query/bias": ("model",),
    "self_attention/key/bias": ("model",),
    "self_attention/value/bias": ("model",),
    "self_attention/attention_output/kernel": ROW,
    "feedforward_intermediate_dense/kernel": COLUMN,
    "feedforward_intermediate_dense/bias": ("model",),
    "feedforward_output_dense/kernel": ROW,
}


def _mesh():
    devices = keras.distribution.list_devices()[:1]
    return keras.distribution.DeviceMesh((1, 1), ["batch", "model"], devices)


def test_layout_map_shards_kernels_megatron_style():
    layouts = distribution.layout_map(_mesh())
    for suffix, axes in EXPECTED.items():
        for prefix in ("block_0/", "my_model/encoder_layer_11/"):
            assert tuple(layouts[prefix + suffix].axes) == axes, suffix
    # A MultiHeadSelfAttention of any name, alone in a model.
    for name in ("multi_head_self_attention_1", "attn"):
        assert tuple(layouts[f"{name}/query/kernel"].axes) == COLUMN
        assert tuple(layouts[f"{name}/attention_output/kernel"].axes) == ROW
    for replicated in (
        "my_query/kernel",
        "block_0/querykey/kernel",
        "block_0/self_attention/attention_output/bias",
        "block_0/feedforward_output_dense/bias",
        "block_0/feedforward_layer_norm/gamma",
        "block_0/self_attention_layer_norm/beta",
        "embedding/embeddings",
        "block_0/self_attention/query/lora_kernel_a",
    ):
        assert layouts[replicated] is None, replicated


def test_layout_map_checks_the_model_axis():
    with pytest.raises(ValueError, match=r"argument `model_axis`.*'tensor'"):
        distribution.layout_map(_mesh(), model_axis="tensor")


@pytest.mark.slow
def test_model_parallel_training_equals_one_device(tmp_path):
    out = tmp_path / "report.json"
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    result = subprocess.run(
        [sys.executable, str(JOB), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["devices"] == 8
    weights = report["weights"]
    sharded = 0
    for path, w in weights.items():
        suffix = "/".join(path.split("/")[-3:])
        short = "/".join(path.split("/")[-2:])
        expected = EXPECTED.get(suffix, EXPECTED.get(short))
        assert w["expected"] == (None if expected is None else list(expected))
        if expected is None:
            assert all(a is None for a in w["spec"]), path
            assert w["shard_shape"] == w["shape"], path
            continue
        sharded += 1
        assert w["spec"] == list(expected), path
        # 4 devices on the model axis: that dimension is split in 4.
        axis = expected.index("model")
        want = list(w["shape"])
        want[axis] //= 4
        assert w["shard_shape"] == want, path
    assert sharded == 2 * 10  # two blocks
    # Same weights as one device (measured up to 1.8e-7), after training
    # that moved them visibly.
    assert max(w["max_abs_diff"] for w in weights.values()) <= 1e-5
    assert max(w["moved"] for w in weights.values()) > 1e-3
