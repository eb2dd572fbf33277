import keras
import numpy as np
import pytest

from keras_encoder import PositionalEncoding
from keras_encoder._masking import keras_mask
from keras_encoder.positional_encoding import sinusoid_table
from tests import numpy_reference as ref
from tests.helpers import to_numpy


def test_sinusoid_fixed_values():
    table = sinusoid_table(3, 4)
    # pos 0: sin(0)=0 on even, cos(0)=1 on odd features.
    np.testing.assert_allclose(table[0], [0.0, 1.0, 0.0, 1.0], atol=1e-7)
    # pos 1: frequencies 1 and 1/10000^(2/4) = 0.01.
    np.testing.assert_allclose(
        table[1],
        [0.8414709848, 0.5403023059, 0.0099998333, 0.9999500004],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        table[2],
        [0.9092974268, -0.4161468365, 0.0199986667, 0.9998000067],
        rtol=1e-6,
    )


@pytest.mark.parametrize("length,width", [(50, 16), (7, 5), (512, 64)])
def test_sinusoid_matches_numpy(length, width):
    table = sinusoid_table(length, width)
    assert table.dtype == np.float32
    np.testing.assert_allclose(table, ref.sinusoid(length, width), atol=1e-7)


def test_sinusoidal_adds_table_for_any_length():
    layer = PositionalEncoding(max_length=10)
    for length in (1, 6, 10):
        x = np.random.default_rng(length).normal(size=(2, length, 6))
        np.testing.assert_allclose(
            to_numpy(layer(x.astype("float32"))),
            x + ref.sinusoid(length, 6),
            atol=1e-6,
        )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_sinusoid_computed_in_float32_then_cast(policy):
    layer = PositionalEncoding(max_length=300, dtype=policy)
    out = layer(np.zeros((1, 300, 8), "float32"))
    compute = policy[6:]
    assert keras.backend.standardize_dtype(out.dtype) == compute
    expected = keras.ops.cast(sinusoid_table(300, 8), compute)
    np.testing.assert_array_equal(
        to_numpy(keras.ops.cast(out[0], "float32")),
        to_numpy(keras.ops.cast(expected, "float32")),
    )


def test_learned_adds_table_rows():
    layer = PositionalEncoding(max_length=6, mode="learned")
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    out = layer(x)
    table = layer.position_embeddings.numpy()
    assert table.shape == (6, 3)
    assert layer.trainable_weights == [layer.position_embeddings]
    np.testing.assert_allclose(to_numpy(out), x + table[:4], rtol=1e-6)


def test_learned_dynamic_length_in_functional_model():
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, PositionalEncoding(8, mode="learned")(inputs))
    table = model.layers[-1].position_embeddings.numpy()
    for length in (2, 8, 5):
        x = np.zeros((1, length, 3), "float32")
        np.testing.assert_allclose(
            model.predict(x, verbose=0)[0], table[:length]
        )


@pytest.mark.parametrize("mode", ["sinusoidal", "learned"])
def test_too_long_sequence_is_a_clear_error(mode):
    layer = PositionalEncoding(max_length=4, mode=mode, name="pos")
    layer(np.zeros((1, 4, 2), "float32"))
    message = (
        r"The input sequence length 5 exceeds max_length=4 of layer "
        r"'pos'"
    )
    with pytest.raises(ValueError, match=message):
        layer(np.zeros((1, 5, 2), "float32"))
    with pytest.raises(ValueError, match=message):
        layer(keras.KerasTensor((None, 5, 2)))
    inputs = keras.Input((None, 2))
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(ValueError, match=message):
        model.predict(np.zeros((1, 5, 2), "float32"), verbose=0)


def test_mask_passes_through():
    tokens = np.array([[3, 4, 0, 0], [1, 0, 0, 0]])
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    layer = PositionalEncoding(max_length=4)
    out = layer(embedded)
    np.testing.assert_array_equal(to_numpy(keras_mask(out)), tokens != 0)
    assert layer.compute_mask(embedded, None) is None
