"""The two attention paths, fused and materialised, keep one contract.

On JAX and torch, `flash_attention=True` runs `keras.ops.dot_product_attention`
and `False` the explicit float32 scores; they must agree, in outputs and
gradients, for every mask kind, and both give exactly 0 attention to query
rows with nothing to attend to. On TensorFlow the fused function itself is
still checked against the contract (it runs Keras's plain-op fallback), and
the layer refuses `flash_attention=True` with a clear error.
"""

import keras
import numpy as np
import pytest

from keras_encoder import EncoderBlock
from keras_encoder import MultiHeadSelfAttention
from keras_encoder import SentencePooling
from keras_encoder import _attention
from keras_encoder import _masking
from tests import numpy_reference as ref
from tests.helpers import attention_weights
from tests.helpers import padding_mask
from tests.helpers import randomize_weights
from tests.helpers import to_numpy
from tests.helpers import value_and_gradients

FUSED_BACKEND = keras.backend.backend() in ("jax", "torch")
needs_fused = pytest.mark.skipif(
    not FUSED_BACKEND, reason="no fused attention kernel on this backend"
)

B, S, H, D = 3, 7, 2, 4
_rng = np.random.default_rng(11)
MASKS = {
    "none": {},
    "padding": {"mask": padding_mask([7, 4, 1], S)},
    "fully padded row": {"mask": padding_mask([5, 0, 7], S)},
    "causal": {"use_causal_mask": True},
    "padding+causal": {
        "mask": padding_mask([6, 0, 3], S),
        "use_causal_mask": True,
    },
    "(B,S,S)": {"attention_mask": _rng.random((B, S, S)) > 0.4},
    "(B,H,S,S)+padding": {
        "attention_mask": _rng.random((B, H, S, S)) > 0.5,
        "mask": padding_mask([7, 2, 0], S),
    },
    "(B,1,S,S)+causal": {
        "attention_mask": _rng.random((B, 1, S, S)) > 0.3,
        "use_causal_mask": True,
    },
    # Rows that the pairwise mask empties, and a sequence it empties.
    "empty rows": {
        "attention_mask": np.stack(
            [
                np.eye(S, dtype=bool) & (np.arange(S) % 2 == 0)[:, None],
                np.zeros((S, S), bool),
                np.ones((S, S), bool),
            ]
        ),
    },
}


def _inputs(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, S, H * D)) * scale).astype("float32")


def _pair(cls, x, **kwargs):
    """The same layer twice, fused and materialised, with equal weights."""
    layers = []
    for flash in (True, False):
        layer = cls(**kwargs, flash_attention=flash)
        layer.build(x.shape)
        layers.append(layer)
    randomize_weights(layers[0], seed=3)
    layers[1].set_weights(layers[0].get_weights())
    return layers


def _allowed(kwargs):
    return ref.full_mask(
        B,
        S,
        H,
        mask=kwargs.get("mask"),
        attention_mask=kwargs.get("attention_mask"),
        causal=kwargs.get("use_causal_mask", False),
    )


def _assert_paths_agree(x, options, kwargs, zero_key_bias_gradient):
    """A fused and a materialised MultiHeadSelfAttention with equal weights
    (`options`), called with `kwargs`: outputs and the gradients of the
    inputs and every weight agree, and both match the float64 reference.

    The key bias gets no gradient when softmax cancels q . b_k (no rotary
    positions): both paths then give float noise around 0, checked when
    `zero_key_bias_gradient`, skipped otherwise.
    """
    fused, explicit = _pair(MultiHeadSelfAttention, x, num_heads=H, **options)
    out_f, grads_f = value_and_gradients(fused, x, **kwargs)
    out_e, grads_e = value_and_gradients(explicit, x, **kwargs)
    np.testing.assert_allclose(
        to_numpy(out_f), to_numpy(out_e), atol=1e-5, rtol=1e-5
    )
    names = ["inputs"] + [w.path for w in fused.trainable_weights]
    for name, g_f, g_e in zip(names, grads_f, grads_e, strict=True):
        g_f, g_e = to_numpy(g_f), to_numpy(g_e)
        if name.endswith("key/bias"):
            if zero_key_bias_gradient:
                assert np.isfinite(g_f).all()
                assert np.abs(g_f).max() < 1e-4 and np.abs(g_e).max() < 1e-4
            continue
        assert np.isfinite(g_f).all()
        np.testing.assert_allclose(g_f, g_e, atol=1e-5, rtol=1e-4, err_msg=name)
    expected, _ = ref.attention(
        x,
        attention_weights(explicit),
        H,
        D,
        D,
        rotary_max_wavelength=options.get("rotary_max_wavelength"),
        rotary_fraction=options.get("rotary_fraction", 1.0),
        bias=kwargs.get("attention_bias"),
        mask=kwargs.get("mask"),
        attention_mask=kwargs.get("attention_mask"),
        causal=kwargs.get("use_causal_mask", False),
        window=options.get("sliding_window"),
    )
    np.testing.assert_allclose(to_numpy(out_f), expected, atol=1e-5)


@needs_fused
@pytest.mark.parametrize("case", MASKS)
def test_paths_agree_on_outputs_and_gradients(case):
    _assert_paths_agree(_inputs(), {}, MASKS[case], True)


_BIAS = _rng.normal(size=(1, H, S, S)).astype("float32")
# (layer options, call arguments): positions, windows and biases with the
# masks they meet in practice.
POSITION_CASES = {
    "rotary+padding": ({"rotary_max_wavelength": 50.0}, MASKS["padding"]),
    "partial rotary+causal": (
        {"rotary_max_wavelength": 50.0, "rotary_fraction": 0.5},
        MASKS["causal"],
    ),
    "window+fully padded row": (
        {"sliding_window": 2},
        MASKS["fully padded row"],
    ),
    "window+(B,S,S)": ({"sliding_window": 3}, MASKS["(B,S,S)"]),
    "bias": ({}, {"attention_bias": _BIAS}),
    "bias+padding+causal": (
        {},
        {**MASKS["padding+causal"], "attention_bias": _BIAS},
    ),
    "(S,S) bias+empty rows": (
        {},
        {**MASKS["empty rows"], "attention_bias": _BIAS[0, 0] * 10.0},
    ),
    # The Hugging Face convention: float32's lowest at padded keys.
    "lowest-float bias+fully padded row": (
        {},
        {
            **MASKS["fully padded row"],
            "attention_bias": np.where(
                MASKS["fully padded row"]["mask"][:, None, None, :],
                0.0,
                np.finfo("float32").min,
            ).astype("float32"),
        },
    ),
    "ModernBERT local: rotary+window+padding": (
        {"rotary_max_wavelength": 1e4, "sliding_window": 3},
        MASKS["fully padded row"],
    ),
}


@needs_fused
@pytest.mark.parametrize("case", POSITION_CASES)
def test_paths_agree_with_positions_windows_and_biases(case):
    options, kwargs = POSITION_CASES[case]
    _assert_paths_agree(_inputs(2), options, kwargs, False)


@needs_fused
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("case", ["padding+causal", "(B,H,S,S)+padding"])
def test_blocks_agree(case, norm_first):
    x = _inputs(1)
    fused, explicit = _pair(
        EncoderBlock, x, num_heads=H, intermediate_dim=16, norm_first=norm_first
    )
    np.testing.assert_allclose(
        to_numpy(fused(x, **MASKS[case])),
        to_numpy(explicit(x, **MASKS[case])),
        atol=1e-5,
    )


@needs_fused
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize(
    "case", ["padding", "fully padded row", "(B,H,S,S)+padding", "empty rows"]
)
def test_paths_agree_in_half_precision(case, policy):
    """Within the half-precision rounding of the projections' outputs:
    bfloat16 keeps 8 bits of mantissa, float16 11."""
    atol = {"mixed_float16": 1e-2, "mixed_bfloat16": 6e-2}[policy]
    keras.config.set_dtype_policy(policy)
    x = _inputs(2)
    kwargs = MASKS[case]
    fused, explicit = _pair(MultiHeadSelfAttention, x, num_heads=H)
    out_f, grads_f = value_and_gradients(fused, x, **kwargs)
    out_e, _ = value_and_gradients(explicit, x, **kwargs)
    out_f = to_numpy(keras.ops.cast(out_f, "float32"))
    out_e = to_numpy(keras.ops.cast(out_e, "float32"))
    assert np.isfinite(out_f).all()
    assert all(
        np.isfinite(to_numpy(keras.ops.cast(g, "float32"))).all()
        for g in grads_f
    )
    np.testing.assert_allclose(out_f, out_e, atol=atol)
    # Query rows with nothing to attend to get exactly the output bias.
    empty = ~_allowed(kwargs).any(-1).any(1)  # (B, S)
    bias = to_numpy(keras.ops.cast(fused.output_dense.bias, policy[6:]))
    bias = to_numpy(keras.ops.cast(bias, "float32"))
    np.testing.assert_array_equal(
        out_f[empty], np.broadcast_to(bias, out_f[empty].shape)
    )


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", MASKS)
def test_fused_function_gives_exact_zero_rows(case, dtype):
    """The fused core alone, on every backend (TensorFlow runs Keras's
    plain-op fallback): rows with nothing to attend to are exactly 0, real
    rows match the materialised core, padded content is never seen."""
    rng = np.random.default_rng(4)
    q, k, v = (
        keras.ops.cast(rng.normal(size=(B, S, H, D)).astype("float32"), dtype)
        for _ in range(3)
    )
    kwargs = MASKS[case]
    masks = _masking.AttentionMask.for_call(
        keras.ops.zeros((B, S, H * D)),
        mask=kwargs.get("mask"),
        attention_mask=kwargs.get("attention_mask"),
        use_causal_mask=kwargs.get("use_causal_mask", False),
    )
    fused = _attention.fused(q, k, v, masks, scale=0.5)
    explicit, _ = _attention.materialized(q, k, v, masks, scale=0.5)
    fused = to_numpy(keras.ops.cast(fused, "float32"))
    explicit = to_numpy(keras.ops.cast(explicit, "float32"))
    assert np.isfinite(fused).all()
    empty = ~_allowed(kwargs).any(-1)  # (B, H, S)
    assert (fused.transpose(0, 2, 1, 3)[empty] == 0).all()
    atol = {"float32": 1e-6, "float16": 5e-3, "bfloat16": 3e-2}[dtype]
    np.testing.assert_allclose(fused, explicit, atol=atol)


@needs_fused
def test_padded_content_never_reaches_real_positions_fused():
    x = _inputs(5, scale=30.0)
    mask = padding_mask([7, 3, 0], S)
    layer = MultiHeadSelfAttention(H, flash_attention=True)
    layer.build(x.shape)
    randomize_weights(layer, 6)
    out = to_numpy(layer(x, mask=mask))
    noisy = np.where(mask[..., None], x, np.float32(1e3) * _inputs(7))
    np.testing.assert_array_equal(
        to_numpy(layer(noisy, mask=mask))[mask], out[mask]
    )


@needs_fused
def test_block_runs_fused_unless_scores_are_requested():
    """A block asks its attention for scores only when its caller does: with
    flash_attention=True it runs, and asking for scores is a clear error."""
    x = _inputs(8)
    block = EncoderBlock(H, 16, flash_attention=True)
    assert np.isfinite(to_numpy(block(x, mask=MASKS["padding"]["mask"]))).all()
    with pytest.raises(
        ValueError,
        match=r"argument `flash_attention`: the fused kernel cannot return "
        r"attention scores. Received: flash_attention=True",
    ):
        block(x, return_attention_scores=True)
    # With None, asking for scores quietly takes the materialised path.
    _, scores = EncoderBlock(H, 16)(x, return_attention_scores=True)
    assert scores.shape == (B, H, S, S)


@needs_fused
def test_attention_dropout_in_training_takes_the_materialised_path():
    x = _inputs(9)
    layer = MultiHeadSelfAttention(H, dropout=0.5)
    layer.build(x.shape)
    # Inference: fused and materialised agree; training: dropout is applied.
    reference = MultiHeadSelfAttention(H, dropout=0.5, flash_attention=False)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        to_numpy(layer(x)), to_numpy(reference(x)), atol=1e-5
    )
    assert not np.allclose(
        to_numpy(layer(x, training=True)), to_numpy(layer(x)), atol=1e-3
    )


@pytest.mark.skipif(FUSED_BACKEND, reason="TensorFlow only")
def test_flash_attention_true_on_tensorflow_is_a_clear_error():
    layer = MultiHeadSelfAttention(H, flash_attention=True)
    with pytest.raises(
        ValueError,
        match=r"argument `flash_attention`: the TensorFlow backend has no "
        r"fused attention kernel \(use the JAX or torch backend\). "
        r"Received: flash_attention=True",
    ):
        layer(_inputs())


class _LocalAttention(MultiHeadSelfAttention):
    """A sliding window of +-1 plugged in at the seam, as a user would."""

    def _compute_attention(self, query, key, value, attention_mask, **kwargs):
        positions = keras.ops.arange(keras.ops.shape(query)[1])
        distance = keras.ops.abs(
            keras.ops.expand_dims(positions, 1)
            - keras.ops.expand_dims(positions, 0)
        )
        window = keras.ops.reshape(
            keras.ops.less_equal(distance, 1), (1, 1, S, S)
        )
        return super()._compute_attention(
            query, key, value, attention_mask.with_pairwise(window), **kwargs
        )


@pytest.mark.parametrize("flash_attention", [None, False])
def test_seam_takes_a_subclass_restriction(flash_attention):
    """A subclass that restricts attention at `_compute_attention` equals the
    base layer given the same restriction as an explicit attention_mask."""
    x = _inputs(10)
    mask = padding_mask([7, 4, 0], S)
    local = _LocalAttention(H, flash_attention=flash_attention)
    local.build(x.shape)
    randomize_weights(local, 12)
    base = MultiHeadSelfAttention(H, flash_attention=flash_attention)
    base.build(x.shape)
    base.set_weights(local.get_weights())
    band = np.abs(np.arange(S)[:, None] - np.arange(S)[None, :]) <= 1
    band = np.broadcast_to(band, (B, S, S))
    np.testing.assert_allclose(
        to_numpy(local(x, mask=mask)),
        to_numpy(base(x, mask=mask, attention_mask=band)),
        atol=1e-6,
    )
    _, scores = local(x, mask=mask, return_attention_scores=True)
    assert (to_numpy(scores)[:, :, ~band[0]] == 0).all()


@pytest.fixture
def flash_attention_switch():
    """Restores Keras's global flash-attention switch after a test."""
    from keras.src.backend.common import global_state

    saved = keras.config.is_flash_attention_enabled()
    yield
    global_state.set_global_attribute("flash_attention", saved)


@needs_fused
@pytest.mark.parametrize("cls", [MultiHeadSelfAttention, EncoderBlock])
def test_disable_flash_attention_is_honoured(
    cls, flash_attention_switch, monkeypatch
):
    """`flash_attention=None` stops calling the fused kernel once
    `keras.config.disable_flash_attention()` is called, as Keras's own
    MultiHeadAttention does; `True` still calls it."""
    calls = []
    kernel = keras.ops.dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(keras.ops, "dot_product_attention", counted)
    x = _inputs(5)
    kwargs = {"num_heads": H}
    if cls is EncoderBlock:
        kwargs["intermediate_dim"] = 8
    mask = padding_mask([7, 3, 0], S)
    auto, forced = cls(**kwargs), cls(**kwargs, flash_attention=True)
    auto.build(x.shape)
    forced.build(x.shape)
    forced.set_weights(auto.get_weights())
    fused_out = to_numpy(auto(x, mask=mask))
    assert len(calls) == 1
    keras.config.disable_flash_attention()
    materialized_out = to_numpy(auto(x, mask=mask))
    assert len(calls) == 1  # the switch holds for flash_attention=None
    np.testing.assert_allclose(materialized_out, fused_out, atol=1e-5)
    forced(x, mask=mask)
    assert len(calls) == 2  # an explicit True is kept, as in Keras


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="a JAX-on-CPU limit"
)
@pytest.mark.parametrize("flash_attention", [None, True])
def test_fused_path_trains_in_float16_under_jit_on_jax(flash_attention):
    """`jit(grad(dot_product_attention))` in float16 fails on JAX's CPU
    ("precision 'F16_F16_F32' is not supported by dot_general"); the fused
    path computes in float32 there, so `fit` runs under mixed_float16 and
    agrees with the materialised path."""
    keras.config.set_dtype_policy("mixed_float16")
    tokens = np.random.default_rng(0).integers(1, 50, (4, 6))
    tokens[:, 4:] = 0

    def model(flash):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((None,), dtype="int32")
        h = keras.layers.Embedding(50, 8, mask_zero=True)(inputs)
        h = EncoderBlock(2, 16, flash_attention=flash)(h)
        outputs = keras.layers.Dense(1)(SentencePooling()(h))
        model = keras.Model(inputs, outputs)
        model.compile("sgd", "mse", jit_compile=True)
        return model

    fused, explicit = model(flash_attention), model(False)
    for m in (fused, explicit):
        m.fit(tokens, np.ones((4, 1)), epochs=1, batch_size=4, verbose=0)
    np.testing.assert_allclose(
        fused.predict(tokens, verbose=0),
        explicit.predict(tokens, verbose=0),
        atol=2e-2,
    )
