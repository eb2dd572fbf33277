"""Model-parallel training on 8 virtual CPU devices against one device.

Run by tests/test_distribution.py in a fresh process with KERAS_BACKEND=jax
and XLA_FLAGS=--xla_force_host_platform_device_count=8: trains the same
model from the same weights on the same batches twice, on one device and
under `keras.distribution.ModelParallel` with `layout_map` on a (2 batch,
4 model) mesh, and writes JSON to the path given: for every weight, the
largest difference between the two runs, how far training moved it, its
expected and actual sharding, and its shard shape.

Then, under "indivisible", four models whose mapped weights the model axis
does not always divide, each built on a (1, 3) or (1, 4) mesh: whether it
built, the weights `layout_map` left replicated and its warnings, every
weight's sharding, and the largest difference of its outputs from one
device's with the same weights.
"""

import json
import sys
import warnings

import jax
import keras
import numpy as np

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import SentencePooling
from keras_encoder import distribution
from keras_encoder.testing import padded_ids

VOCAB, WIDTH, HEADS, FFN = 40, 32, 4, 64


def _spec(variable):
    return [
        a if a is None or isinstance(a, str) else list(a)
        for a in variable.value.sharding.spec
    ]


def build():
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True)(tokens)
    x = PositionalEncoding(16)(x)
    x = EncoderBlock(HEADS, FFN, name="block_0")(x)
    x = EncoderBlock(
        HEADS,
        FFN,
        norm_first=True,
        feedforward="geglu",
        rotary_max_wavelength=1e4,
        name="block_1",
    )(x)
    x = SentencePooling(normalize=False)(x)
    return keras.Model(tokens, keras.layers.Dense(1)(x))


keras.utils.set_random_seed(0)
initial = build().get_weights()
rng = np.random.default_rng(1)
ids = padded_ids(16, 12, VOCAB, rng=rng, min_length=3)
targets = rng.normal(size=(16, 1)).astype("float32")


def train(model):
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.003), loss="mse")
    model.fit(ids, targets, batch_size=8, epochs=3, shuffle=False, verbose=0)
    return model


reference = [np.asarray(w) for w in train(build()).get_weights()]
devices = keras.distribution.list_devices()
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
layouts = distribution.layout_map(mesh)
parallel = keras.distribution.ModelParallel(
    layout_map=layouts, batch_dim_name="batch"
)
with parallel.scope():
    model = train(build())
report = {"devices": len(devices), "weights": {}}
for variable, want, start in zip(
    model.weights, reference, initial, strict=True
):
    layout = layouts[variable.path]
    value = np.asarray(variable.value)
    report["weights"][variable.path] = {
        "max_abs_diff": float(np.abs(value - want).max()),
        "moved": float(np.abs(want - start).max()),
        "expected": None if layout is None else list(layout.axes),
        "spec": _spec(variable),
        "shards": len(variable.value.addressable_shards),
        "shard_shape": list(variable.value.addressable_shards[0].data.shape),
        "shape": list(variable.shape),
    }


def _block_model(heads, ffn, head=None):
    inputs = keras.Input((None, 16))
    x = EncoderBlock(heads, ffn, name="block")(inputs)
    return keras.Model(inputs, x if head is None else head(x))


def _keras_attention_model():
    inputs = keras.Input((None, 16))
    attention = keras.layers.MultiHeadAttention(3, 8, name="mha")
    return keras.Model(inputs, attention(inputs, inputs))


# name: (devices on the model axis, model builder); widths of 16.
INDIVISIBLE = {
    # Attention (16 columns) cannot split in 3, the feed-forward (48) can.
    "width_16_on_3": (3, lambda: _block_model(2, 48)),
    "intermediate_30_on_4": (4, lambda: _block_model(4, 30)),
    # A foreign layer named like a sublayer: (16, 1) kernel.
    "foreign_value_head_on_4": (
        4,
        lambda: _block_model(4, 32, keras.layers.Dense(1, name="value")),
    ),
    # Keras's own attention: query kernel (16, 3 heads, 8).
    "keras_mha_3_heads_on_4": (4, _keras_attention_model),
}
report["indivisible"] = {}
inputs = rng.normal(size=(2, 5, 16)).astype("float32")
for name, (size, build_case) in INDIVISIBLE.items():
    keras.utils.set_random_seed(0)
    one_device = build_case()
    # Jitted: one compile per model, not one per eager op.
    want = np.asarray(jax.jit(one_device)(inputs))
    mesh = keras.distribution.DeviceMesh(
        (1, size), ["batch", "model"], devices[:size]
    )
    layouts = distribution.layout_map(mesh)
    parallel = keras.distribution.ModelParallel(
        layout_map=layouts, batch_dim_name="batch"
    )
    case = report["indivisible"][name] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with parallel.scope():
                model = build_case()
                model.set_weights(one_device.get_weights())
                got = np.asarray(jax.jit(model)(inputs))
        except Exception as error:
            # Reported; the test asserts there was none.
            case["error"] = f"{type(error).__name__}: {error}"[:2000]
            continue
    case["warnings"] = [
        str(w.message) for w in caught if "layout_map" in str(w.message)
    ]
    case["replicated"] = layouts.replicated
    case["weights"] = {
        v.path: {
            "mapped": None
            if layouts[v.path] is None
            else list(layouts[v.path].axes),
            "spec": _spec(v),
            "shape": list(v.shape),
        }
        for v in model.weights
    }
    case["max_abs_diff"] = float(np.abs(got - want).max())

with open(sys.argv[1], "w") as f:
    json.dump(report, f)
