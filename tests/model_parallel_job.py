"""Model-parallel training on 8 virtual CPU devices against one device.

Run by tests/test_distribution.py in a fresh process with KERAS_BACKEND=jax
and XLA_FLAGS=--xla_force_host_platform_device_count=8: trains the same
model from the same weights on the same batches twice, on one device and
under `keras.distribution.ModelParallel` with `layout_map` on a (2 batch,
4 model) mesh, and writes JSON to the path given: for every weight, the
largest difference between the two runs, how far training moved it, its
expected and actual sharding, and its shard shape.
"""

import json
import sys

import keras
import numpy as np

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import SentencePooling
from keras_encoder import distribution
from keras_encoder.testing import padded_ids

VOCAB, WIDTH, HEADS, FFN = 40, 32, 4, 64


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
        "spec": [
            a if a is None or isinstance(a, str) else list(a)
            for a in variable.value.sharding.spec
        ],
        "shards": len(variable.value.addressable_shards),
        "shard_shape": list(variable.value.addressable_shards[0].data.shape),
        "shape": list(variable.shape),
    }
with open(sys.argv[1], "w") as f:
    json.dump(report, f)
