import keras
import numpy as np
import pytest

from keras_encoder import EncoderBlock
from keras_encoder._masking import keras_mask
from tests import numpy_reference as ref
from tests.helpers import block_weights
from tests.helpers import padding_mask
from tests.helpers import randomize_weights
from tests.helpers import to_numpy


def _block(x, seed=0, **kwargs):
    block = EncoderBlock(**kwargs)
    block.build(x.shape)
    randomize_weights(block, seed)
    return block


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masks", ["none", "padding", "padding+causal"])
def test_matches_numpy_reference(norm_first, activation, masks):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 6, 8)).astype("float32")
    block = _block(
        x,
        num_heads=2,
        intermediate_dim=16,
        activation=activation,
        norm_first=norm_first,
        layer_norm_epsilon=1e-5,
    )
    kwargs = {}
    if masks != "none":
        kwargs["mask"] = padding_mask([6, 3, 0], 6)
    causal = masks.endswith("causal")
    got = to_numpy(block(x, use_causal_mask=causal, **kwargs))
    expected = ref.encoder_block(
        x,
        block_weights(block),
        2,
        4,
        activation,
        norm_first,
        1e-5,
        causal=causal,
        **kwargs,
    )
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


# The 2024-style options, alone and as ModernBERT combines them.
OPTION_CASES = {
    "geglu": {"feedforward": "geglu"},
    "swiglu+rms_norm": {"feedforward": "swiglu", "normalization": "rms_norm"},
    "no biases": {"use_bias": False},
    "biases, bias-free norms": {"norm_bias": False},
    "rotary": {"rotary_max_wavelength": 100.0},
    "partial rotary": {"rotary_max_wavelength": 100.0, "rotary_fraction": 0.5},
    "sliding window": {"sliding_window": 2},
    "ModernBERT first layer": {
        "norm_first": True,
        "use_bias": False,
        "feedforward": "geglu",
        "attention_norm": False,
        "rotary_max_wavelength": 160000.0,
    },
    "ModernBERT local layer": {
        "norm_first": True,
        "use_bias": False,
        "feedforward": "geglu",
        "rotary_max_wavelength": 10000.0,
        "sliding_window": 3,
    },
}


@pytest.mark.parametrize("case", OPTION_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_options_match_numpy_reference(case, with_bias):
    """Every block option against tests/numpy_reference.py, with padding,
    and with an additive attention bias."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 7, 8)).astype("float32")
    options = OPTION_CASES[case]
    block = _block(x, num_heads=2, intermediate_dim=6, **options)
    mask = padding_mask([7, 4, 0], 7)
    bias = (
        rng.normal(size=(1, 2, 7, 7)).astype("float32") if with_bias else None
    )
    got = to_numpy(block(x, mask=mask, attention_bias=bias))
    reference_options = dict(options)
    for ours, theirs in [
        ("sliding_window", "window"),
    ]:
        if ours in reference_options:
            reference_options[theirs] = reference_options.pop(ours)
    activation = {"geglu": "gelu", "swiglu": "silu"}.get(
        options.get("feedforward"), "relu"
    )
    expected = ref.encoder_block(
        x,
        block.get_weights(),
        2,
        4,
        activation,
        epsilon=1e-5,
        mask=mask,
        bias=bias,
        **reference_options,
    )
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_custom_key_dim_and_epsilon_match_numpy_reference():
    x = np.random.default_rng(6).normal(size=(2, 5, 6)).astype("float32")
    block = _block(
        x,
        num_heads=3,
        intermediate_dim=7,
        key_dim=5,
        layer_norm_epsilon=1e-3,
        activation="tanh",
    )
    am = np.random.default_rng(7).random((2, 3, 5, 5)) > 0.3
    got = to_numpy(block(x, attention_mask=am))
    expected = ref.encoder_block(
        x, block_weights(block), 3, 5, "tanh", False, 1e-3, attention_mask=am
    )
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_hand_set_weights():
    """All dense weights zero: both sublayers add 0 to the residual.

    So post-LN gives LayerNorm(LayerNorm(x)) and pre-LN gives x.
    """
    x = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
    once = ref.layer_norm(np.float64(x), 1.0, 0.0, 1e-5)
    for norm_first, expected in [
        (False, ref.layer_norm(once, 1.0, 0.0, 1e-5)),
        (True, x),
    ]:
        block = EncoderBlock(
            2, 8, norm_first=norm_first, kernel_initializer="zeros"
        )
        np.testing.assert_allclose(to_numpy(block(x)), expected, atol=1e-5)


def test_attention_scores_and_mask_are_passed_on():
    tokens = np.array([[4, 2, 7, 0], [0, 0, 0, 0]])
    embedded = keras.layers.Embedding(10, 8, mask_zero=True)(tokens)
    block = EncoderBlock(num_heads=2, intermediate_dim=8)
    out, scores = block(embedded, return_attention_scores=True)
    assert out.shape == (2, 4, 8) and scores.shape == (2, 2, 4, 4)
    np.testing.assert_array_equal(to_numpy(keras_mask(out)), tokens != 0)
    assert (to_numpy(scores)[0, :, :, 3] == 0).all()
    assert (to_numpy(scores)[1] == 0).all()


@pytest.mark.parametrize("norm_first", [False, True])
def test_dropout_only_in_training(norm_first):
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    block = EncoderBlock(
        2, 16, dropout=0.5, attention_dropout=0.5, norm_first=norm_first
    )
    np.testing.assert_array_equal(
        to_numpy(block(x)), to_numpy(block(x, training=False))
    )
    assert not np.allclose(
        to_numpy(block(x, training=True)), to_numpy(block(x))
    )


def test_seeded_initializer_gives_distinct_reproducible_kernels():
    def kernels():
        block = EncoderBlock(
            2, 8, kernel_initializer=keras.initializers.GlorotUniform(seed=1)
        )
        block.build((None, None, 8))
        a = block.attention
        return [
            d.kernel.numpy()
            for d in (a.query_dense, a.key_dense, a.value_dense, a.output_dense)
        ]

    first, second = kernels(), kernels()
    for i in range(4):
        np.testing.assert_array_equal(first[i], second[i])  # reproducible
        for j in range(i + 1, 4):
            assert not np.allclose(first[i], first[j])  # not one draw
