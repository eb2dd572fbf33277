import math

import keras
import numpy as np
import pytest

import keras_encoder
from keras_encoder import MultiHeadSelfAttention
from tests import numpy_reference as ref
from tests.helpers import attention_weights
from tests.helpers import padding_mask
from tests.helpers import randomize_weights
from tests.helpers import to_numpy


def _layer(x, seed=0, **kwargs):
    layer = MultiHeadSelfAttention(**kwargs)
    layer.build(x.shape)
    randomize_weights(layer, seed)
    return layer


MASK_CASES = {
    "none": {},
    "padding": {"mask": padding_mask([5, 2, 0], 5)},
    "causal": {"causal": True},
    "padding+causal": {"mask": padding_mask([4, 5, 1], 5), "causal": True},
    "attention_mask_3d": {
        "attention_mask": np.random.default_rng(1).random((3, 5, 5)) > 0.4
    },
    "attention_mask_4d+padding": {
        "attention_mask": np.random.default_rng(2).random((3, 2, 5, 5)) > 0.3,
        "mask": padding_mask([3, 5, 4], 5),
    },
}


@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("key_dim,value_dim", [(None, None), (3, 5)])
def test_matches_numpy_reference(case, key_dim, value_dim):
    x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype("float32")
    layer = _layer(x, num_heads=2, key_dim=key_dim, value_dim=value_dim)
    kwargs = dict(MASK_CASES[case])
    causal = kwargs.pop("causal", False)
    out, scores = layer(
        x, use_causal_mask=causal, return_attention_scores=True, **kwargs
    )
    out, scores = to_numpy(out), to_numpy(scores)
    kd = key_dim or 4
    expected, expected_scores = ref.attention(
        x,
        attention_weights(layer),
        2,
        kd,
        value_dim or kd,
        causal=causal,
        **kwargs,
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_matches_keras_multi_head_attention(causal):
    """Same weights in Keras's own MultiHeadAttention give the same output."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 12)).astype("float32")
    mask = padding_mask([6, 4], 6)
    ours = _layer(x, seed=4, num_heads=3)
    theirs = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4)
    theirs(x, x)
    wq, bq, wk, bk, wv, bv, wo, bo = attention_weights(ours)
    theirs.set_weights(
        [
            wq.reshape(12, 3, 4),
            bq.reshape(3, 4),
            wk.reshape(12, 3, 4),
            bk.reshape(3, 4),
            wv.reshape(12, 3, 4),
            bv.reshape(3, 4),
            wo.reshape(3, 4, 12),
            bo,
        ]
    )
    expected = theirs(
        x,
        x,
        attention_mask=mask[:, None, :] & mask[:, :, None],
        use_causal_mask=causal,
    )
    got = to_numpy(ours(x, mask=mask, use_causal_mask=causal))
    expected = to_numpy(expected)
    real = mask[..., None]  # Keras MHA is not zero at masked query rows.
    np.testing.assert_allclose(
        np.where(real, got, 0), np.where(real, expected, 0), atol=1e-5
    )


def test_hand_set_weights():
    """One head, identity projections: out = softmax(x x^T / sqrt(d)) x."""
    a = 2.0
    x = np.array([[[a, 0.0], [0.0, a]]], dtype="float32")
    layer = MultiHeadSelfAttention(num_heads=1)
    layer.build(x.shape)
    eye, zero = np.eye(2, dtype="float32"), np.zeros(2, dtype="float32")
    layer.set_weights([eye, zero] * 4)
    p = math.exp(a * a / math.sqrt(2)) / (math.exp(a * a / math.sqrt(2)) + 1)
    expected = [[[p * a, (1 - p) * a], [(1 - p) * a, p * a]]]
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-6)
    # Masking the second token: the first attends only to itself, the
    # second (a padded query) gets a zero attention output.
    out = to_numpy(layer(x, mask=np.array([[True, False]])))
    np.testing.assert_allclose(out, [[[a, 0.0], [0.0, 0.0]]], atol=1e-6)


def test_attention_scores():
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")
    layer = MultiHeadSelfAttention(num_heads=2)
    out, scores = layer(
        x,
        mask=padding_mask([3, 0], 4),
        return_attention_scores=True,
        use_causal_mask=True,
    )
    assert scores.shape == (2, 2, 4, 4)
    out, scores = to_numpy(out), to_numpy(scores)
    np.testing.assert_allclose(scores[0, :, :3].sum(-1), 1.0, rtol=1e-6)
    assert (scores[0, :, 3] == 0).all()  # padded query
    assert (scores[0, :, :, 3] == 0).all()  # padded key
    assert (scores[1] == 0).all()  # fully padded sequence
    assert (np.triu(scores[0, 0], 1) == 0).all()  # causal
    np.testing.assert_array_equal(
        out[1], np.broadcast_to(layer.output_dense.bias.numpy(), (4, 8))
    )


def test_symbolic_scores_shape():
    inputs = keras.Input((None, 8))
    out, scores = MultiHeadSelfAttention(num_heads=2)(
        inputs, return_attention_scores=True
    )
    assert out.shape == (None, None, 8)
    assert scores.shape == (None, 2, None, None)


def test_width_not_divisible_by_heads():
    layer = MultiHeadSelfAttention(num_heads=3)
    with pytest.raises(
        ValueError,
        match=r"width 8 must be divisible by "
        r"num_heads when key_dim is not given. Received: "
        r"num_heads=3",
    ):
        layer.build((None, 5, 8))
    # With key_dim given any width works.
    assert MultiHeadSelfAttention(3, key_dim=2)(np.zeros((1, 2, 8))).shape == (
        1,
        2,
        8,
    )


def _zeros(shape, dtype=None):
    return np.zeros(shape, dtype or "float32")


def _ones(shape, dtype=None):
    return np.ones(shape, dtype or "float32")


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (keras_encoder.MultiHeadSelfAttention, {"num_heads": 2}),
        (keras_encoder.EncoderBlock, {"num_heads": 2, "intermediate_dim": 8}),
    ],
    ids=["MultiHeadSelfAttention", "EncoderBlock"],
)
def test_plain_callables_as_initializers(cls, kwargs):
    """Any `(shape, dtype)` callable initializes the kernels and biases, as
    `keras.layers.Dense` accepts it, and is serialized as Dense does."""
    layer = cls(**kwargs, kernel_initializer=_zeros, bias_initializer=_ones)
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    assert to_numpy(layer(x)).shape == x.shape
    dense = keras.layers.Dense(
        2, kernel_initializer=_zeros, bias_initializer=_ones
    )
    for name in ("kernel_initializer", "bias_initializer"):
        assert layer.get_config()[name] == dense.get_config()[name]
    kernels = [w for w in layer.weights if w.path.endswith("/kernel")]
    biases = [w for w in layer.weights if w.path.endswith("/bias")]
    assert len(kernels) >= 4 and len(biases) >= 4
    assert not any(to_numpy(w).any() for w in kernels)
    assert all((to_numpy(w) == 1).all() for w in biases)
    # The case: a lambda.
    lam = cls(
        **kwargs,
        kernel_initializer=lambda shape, dtype=None: (
            0 * (np.ones(shape, "float32"))
        ),
    )
    assert np.isfinite(to_numpy(lam(x))).all()


def test_plain_callable_as_positional_embeddings_initializer():
    layer = keras_encoder.PositionalEncoding(
        8, mode="learned", embeddings_initializer=_ones
    )
    x = np.zeros((2, 3, 4), "float32")
    np.testing.assert_array_equal(to_numpy(layer(x)), np.ones((2, 3, 4)))
