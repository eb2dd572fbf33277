"""Distribution, mixed precision and XLA: same numbers, no NaN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import SentencePooling
from keras_encoder.testing import padded_ids

pytestmark = pytest.mark.slow

VOCAB, LENGTH = 30, 12


def classifier(policy=None, norm_first=False):
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 16, mask_zero=True, dtype=policy)(tokens)
    x = PositionalEncoding(LENGTH, dtype=policy)(x)
    for _ in range(2):
        x = EncoderBlock(2, 32, norm_first=norm_first, dtype=policy)(x)
    # Masked mean that gives 0, not 0/0, for a fully padded sequence
    # (keras.layers.GlobalAveragePooling1D divides by the mask's sum).
    x = SentencePooling(normalize=False, dtype=policy)(x)
    outputs = keras.layers.Dense(3, dtype="float32")(x)
    return keras.Model(tokens, outputs)


def data(batch=16, seed=0, empty_rows=True):
    rng = np.random.default_rng(seed)
    tokens = padded_ids(
        batch,
        LENGTH,
        VOCAB,
        rng=rng,
        # Every fifth sequence fully padded.
        empty_rows=slice(None, None, 5) if empty_rows else None,
    )
    labels = rng.integers(0, 3, size=batch)
    return tokens, labels


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_mirrored_strategy_matches_one_device():
    """Two logical CPU devices train to the same weights as one."""
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs the two logical CPUs that conftest configures")
    x, y = data(batch=32, empty_rows=False)

    def train(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = classifier()
            model.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        return model

    single = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored_strategy = tf.distribute.MirroredStrategy(
        [cpus[0].name, cpus[1].name]
    )
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored = train(mirrored_strategy)
    for a, b in zip(_weights(single), _weights(mirrored), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(
        single.predict(x, verbose=0), mirrored.predict(x, verbose=0), atol=1e-4
    )


@pytest.mark.parametrize("norm_first", [False, True])
def test_xla_matches_graph_mode(norm_first):
    x, y = data()
    results = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        model = classifier(norm_first=norm_first)
        # SGD: Adam would blow float noise in near-zero gradients (the
        # key bias has exactly zero gradient in exact arithmetic) up to
        # full-size steps of either sign.
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        before = model.predict(x, verbose=0)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append((before, model.predict(x, verbose=0), _weights(model)))
    (b0, a0, w0), (b1, a1, w1) = results
    np.testing.assert_allclose(b0, b1, atol=1e-5)
    np.testing.assert_allclose(a0, a1, atol=1e-5)
    for p, q in zip(w0, w1, strict=True):
        np.testing.assert_allclose(p, q, atol=1e-5)


# Mixed precision against float32, same weights: logits differ by at most
# this much (float16 keeps 11 significant bits, bfloat16 8).
MIXED_TOLERANCE = {"mixed_float16": 2e-2, "mixed_bfloat16": 1e-1}


@pytest.mark.parametrize("policy", list(MIXED_TOLERANCE))
def test_mixed_precision_trains_finite_and_close_to_float32(policy):
    x, y = data()
    keras.utils.set_random_seed(0)
    reference = classifier()
    keras.utils.set_random_seed(0)
    mixed = classifier(policy)
    mixed.set_weights(reference.get_weights())
    want = reference.predict(x, verbose=0)
    got = mixed.predict(x, verbose=0)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=MIXED_TOLERANCE[policy])

    # The statistics stay in float32: softmax inside the attention (scores
    # are returned in the compute dtype but computed in float32) and
    # LayerNorm (Keras computes its moments in float32).
    block = mixed.layers[3]
    assert block.compute_dtype == policy[6:]
    assert block.attention_layer_norm.dtype_policy.variable_dtype == "float32"

    mixed.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = mixed.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(np.isfinite(w).all() for w in _weights(mixed))
    assert np.isfinite(mixed.predict(x, verbose=0)).all()
