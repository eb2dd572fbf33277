"""AlibiBias: the paper's slopes, the symmetric encoder bias, and use as an
`attention_bias` that the masking contract overrides."""

import keras
import numpy as np
import pytest

from keras_encoder import AlibiBias
from keras_encoder import EncoderBlock
from keras_encoder import MultiHeadSelfAttention
from keras_encoder.alibi_bias import alibi_slopes
from tests import numpy_reference as ref
from tests.helpers import all_finite
from tests.helpers import attention_weights
from tests.helpers import padding_mask
from tests.helpers import randomize_weights
from tests.helpers import to_numpy
from tests.helpers import value_and_gradients


@pytest.mark.parametrize(
    "num_heads,expected",
    [
        # Press et al.'s get_slopes: 2^(-8/n) geometric for a power of two;
        # otherwise the closest power of two, then every other slope of
        # the next one.
        (8, [2.0**-i for i in range(1, 9)]),
        (4, [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]),
        (6, [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]),
        (1, [2.0**-8]),
    ],
)
def test_slopes_are_the_papers(num_heads, expected):
    np.testing.assert_allclose(alibi_slopes(num_heads), expected, rtol=1e-7)


def test_bias_is_minus_slope_times_distance():
    x = np.zeros((2, 5, 8), "float32")
    bias = to_numpy(AlibiBias(4)(x))
    assert bias.shape == (1, 4, 5, 5)
    distance = np.abs(np.arange(5)[:, None] - np.arange(5)[None, :])
    expected = -alibi_slopes(4)[:, None, None] * distance
    np.testing.assert_allclose(bias[0], expected, rtol=1e-7)


def test_attention_with_alibi_matches_numpy_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 6, 8)).astype("float32")
    mask = padding_mask([6, 2, 0], 6)
    layer = MultiHeadSelfAttention(2)
    layer.build(x.shape)
    randomize_weights(layer)
    bias = AlibiBias(2)(x)
    out = to_numpy(layer(x, mask=mask, attention_bias=bias))
    expected, _ = ref.attention(
        x, attention_weights(layer), 2, 4, 4, bias=to_numpy(bias), mask=mask
    )
    np.testing.assert_allclose(out[mask], expected[mask], atol=1e-5)


def test_masks_override_the_bias():
    """A huge bias toward a padded key changes nothing at real positions."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 4, 8)).astype("float32")
    mask = np.array([[True, True, True, False]])
    layer = MultiHeadSelfAttention(2)
    layer.build(x.shape)
    pulls = np.zeros((1, 2, 4, 4), "float32")
    pulls[..., 3] = 1e4  # every query drawn to the padded key
    plain = to_numpy(layer(x, mask=mask))
    pulled = to_numpy(layer(x, mask=mask, attention_bias=pulls))
    np.testing.assert_array_equal(plain[mask], pulled[mask])


def test_in_a_functional_model_saves_and_reloads(tmp_path):
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(50, 16, mask_zero=True)(tokens)
    bias = AlibiBias(4)(x)
    for _ in range(2):
        x = EncoderBlock(4, 32, norm_first=True)(x, attention_bias=bias)
    model = keras.Model(tokens, x)
    ids = np.array([[5, 8, 2, 0, 0], [1, 2, 3, 4, 5]])
    path = tmp_path / "alibi.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    real = ids != 0
    np.testing.assert_allclose(
        to_numpy(reloaded(ids))[real], to_numpy(model(ids))[real], atol=1e-6
    )


@pytest.mark.parametrize("flash_attention", [None, False])
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_extreme_biases_stay_finite(flash_attention, policy):
    """float32's lowest at padded keys (Hugging Face's additive mask), a
    fully padded row, and a -1e5 bias, which Keras's autocast turns into
    -inf under mixed_float16: outputs and gradients stay finite, and real
    outputs equal those of a plain mask."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 5, 8)).astype("float32")
    mask = padding_mask([5, 3, 0], 5)
    lowest = np.where(mask[:, None, None, :], 0.0, np.finfo("float32").min)
    bias = lowest.astype("float32")
    bias[0, :, :, 4] = -1e5  # every query of row 0 pushed off key 4
    layer = MultiHeadSelfAttention(
        2, flash_attention=flash_attention, dtype=policy
    )
    layer.build(x.shape)
    out, grads = value_and_gradients(layer, x, mask=mask, attention_bias=bias)
    assert all_finite(out, *grads)
    plain = to_numpy(layer(x, mask=mask, attention_bias=bias * 0.0))
    got = to_numpy(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(
        got[1:][mask[1:]], plain[1:][mask[1:]].astype("float32"), atol=1e-2
    )


def test_bad_bias_shapes_and_dtypes_are_clear_errors():
    x = np.zeros((2, 5, 8), "float32")
    layer = MultiHeadSelfAttention(2)
    with pytest.raises(ValueError, match=r"`attention_bias` has shape"):
        layer(x, attention_bias=np.zeros((1, 3, 5, 5), "float32"))
    with pytest.raises(ValueError, match=r"of shape \(S, S\) or"):
        layer(x, attention_bias=np.zeros((5,), "float32"))
    # Rank 3 is ambiguous: (B, S, S) as attention_mask, or (H, S, S).
    with pytest.raises(ValueError, match=r"of shape \(S, S\) or"):
        layer(x, attention_bias=np.zeros((2, 5, 5), "float32"))
    with pytest.raises(TypeError, match=r"must be floating-point"):
        layer(x, attention_bias=np.zeros((5, 5), "int32"))
