"""Model parallelism: `keras_encoder.distribution.layout_map` shards the
attention and feed-forward kernels Megatron-style, training under
`keras.distribution.ModelParallel` on 8 virtual CPU devices (JAX) gives
the weights one device gives, and weights the model axis does not divide
are left replicated, with a warning, instead of failing the build."""

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import keras
import pytest

from keras_encoder import distribution
from keras_encoder.distribution import _unshardable

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


MESH_2_BY_3 = types.SimpleNamespace(axis_names=("batch", "model"), shape=(2, 3))


@pytest.mark.parametrize(
    "axes, shape, reason",
    [
        ((None, "model"), (16, 48), None),
        (("model",), (3, 8), None),  # a rank-2 bias, split on its heads
        ((None, ("batch", "model")), (16, 30), None),
        (
            (None, "model"),
            (16, 16),
            r"splits dimension 1 \(size 16\) over mesh axis 'model' of size 3,",
        ),
        (
            (None, ("batch", "model")),
            (16, 27),
            r"dimension 1 \(size 27\) over mesh axes \('batch', 'model'\) "
            "of size 6,",
        ),
        (
            ("model", None),
            (16,),
            r"layout \('model', None\) has 2 axes, but the weight has rank 1",
        ),
    ],
)
def test_unshardable_names_the_dimension_and_mesh_axis(axes, shape, reason):
    got = _unshardable(axes, shape, MESH_2_BY_3)
    if reason is None:
        assert got is None
    else:
        assert got is not None and re.search(reason, got), got


@pytest.fixture(scope="module")
def model_parallel_report(tmp_path_factory):
    """tests/model_parallel_job.py, run once on 8 virtual CPU devices."""
    out = tmp_path_factory.mktemp("model_parallel") / "report.json"
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
    return json.loads(out.read_text())


@pytest.mark.slow
def test_model_parallel_training_equals_one_device(model_parallel_report):
    report = model_parallel_report
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


ATTENTION = [
    f"block/self_attention/{name}/{weight}"
    for name in ("query", "key", "value")
    for weight in ("kernel", "bias")
] + ["block/self_attention/attention_output/kernel"]
FEEDFORWARD = [
    "block/feedforward_intermediate_dense/kernel",
    "block/feedforward_intermediate_dense/bias",
    "block/feedforward_output_dense/kernel",
]
# Per case of the job: the weights left replicated (all others that the
# map names keep their layout).
REPLICATED = {
    "width_16_on_3": ATTENTION,
    "intermediate_30_on_4": FEEDFORWARD,
    "foreign_value_head_on_4": ["value/kernel", "value/bias"],
    "keras_mha_3_heads_on_4": [
        path.replace("block/self_attention", "mha") for path in ATTENTION
    ],
}
# How many weights keep their mapped sharding: whatever the map could
# split it did (the block's other half, the block under the foreign head).
SHARDED = {
    "width_16_on_3": len(FEEDFORWARD),
    "intermediate_30_on_4": len(ATTENTION),
    "foreign_value_head_on_4": len(ATTENTION) + len(FEEDFORWARD),
    "keras_mha_3_heads_on_4": 0,
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REPLICATED))
def test_layout_map_replicates_weights_the_mesh_does_not_divide(
    model_parallel_report, case
):
    """Width 16 on 3 devices, a feed-forward of 30 on 4, a foreign
    `Dense(1, name="value")` head and a Keras `MultiHeadAttention` of 3
    heads on 4: each built under `ModelParallel` (JAX raised
    IndivisibleError before), with the maths of one device."""
    report = model_parallel_report["indivisible"][case]
    assert "error" not in report, report.get("error")
    assert sorted(report["replicated"]) == sorted(REPLICATED[case])
    assert report["warnings"] == list(report["replicated"].values())
    sharded = 0
    for path, w in report["weights"].items():
        if path in report["replicated"] or w["mapped"] is None:
            assert all(a is None for a in w["spec"]), path
        else:
            assert w["spec"] == w["mapped"], path
            sharded += 1
    assert sharded == SHARDED[case]
    assert report["max_abs_diff"] <= 1e-5


@pytest.mark.slow
def test_layout_map_warning_names_weight_shape_and_mesh_axis(
    model_parallel_report,
):
    report = model_parallel_report["indivisible"]["foreign_value_head_on_4"]
    assert report["replicated"]["value/kernel"] == (
        "layout_map leaves weight 'value/kernel' of shape (16, 1) "
        "replicated: its layout (None, 'model') splits dimension 1 (size 1) "
        "over mesh axis 'model' of size 4, which does not divide it. The "
        "maths is unchanged; only this weight's memory is not split."
    )
