"""The masking contract, checked for every entry point.

True/1 = attend; the implicit Keras mask, `mask`, `attention_mask` and
`use_causal_mask` combine with AND; padded content never reaches real
positions; fully padded rows are finite with finite gradients, in float32,
mixed_float16 and mixed_bfloat16.
"""

import keras
import numpy as np
import pytest
from hypothesis import Phase
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_encoder import AlibiBias
from keras_encoder import EncoderBlock
from keras_encoder import MultiHeadSelfAttention
from keras_encoder import PositionalEncoding
from keras_encoder import SentencePooling
from keras_encoder._attention import masked_softmax
from tests import numpy_reference as ref
from tests.helpers import all_finite
from tests.helpers import attention_weights
from tests.helpers import padding_mask
from tests.helpers import randomize_weights
from tests.helpers import to_numpy
from tests.helpers import value_and_gradients

# No "explain" phase: its line tracer trips over Keras's recursion.
FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


@st.composite
def encoder_cases(draw):
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, 8))
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 4))
    lengths = draw(
        st.lists(st.integers(0, length), min_size=batch, max_size=batch)
    )
    return {
        "batch": batch,
        "length": length,
        "heads": heads,
        "width": heads * head_dim,
        "lengths": lengths,
        "causal": draw(st.booleans()),
        "norm_first": draw(st.booleans()),
        "scale": draw(st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e6, 1e12])),
        # What padded slots hold: anything at all.
        "pad": draw(
            st.sampled_from(
                ["noise", 1e30, -1e30, 3e38, np.inf, -np.inf, np.nan]
            )
        ),
        "seed": draw(st.integers(0, 2**16)),
        # None: the fused path on JAX and torch, materialised on TensorFlow.
        "flash_attention": draw(st.sampled_from([None, False])),
        # The block's 2024-style options.
        "options": {
            "feedforward": draw(st.sampled_from(["mlp", "geglu", "swiglu"])),
            "normalization": draw(st.sampled_from(["layer_norm", "rms_norm"])),
            "use_bias": draw(st.booleans()),
            # Rotation needs 2 features of a head.
            "rotary_max_wavelength": (
                draw(st.sampled_from([None, 1e4])) if head_dim > 1 else None
            ),
            "sliding_window": draw(st.sampled_from([None, 1, 3])),
        },
        "alibi": draw(st.booleans()),
    }


@FUZZ
@given(encoder_cases())
def test_no_padding_leak_and_finite_gradients(case):
    rng = np.random.default_rng(case["seed"])
    shape = (case["batch"], case["length"], case["width"])
    mask = padding_mask(case["lengths"], case["length"])
    x = (rng.normal(size=shape) * case["scale"]).astype("float32")
    block = EncoderBlock(
        case["heads"],
        8,
        norm_first=case["norm_first"],
        flash_attention=case["flash_attention"],
        **case["options"],
    )
    block.build(shape)
    randomize_weights(block, case["seed"])
    kwargs = {"mask": mask, "use_causal_mask": case["causal"]}
    if case["alibi"]:
        kwargs["attention_bias"] = AlibiBias(case["heads"])(x)

    # Padded slots hold any value; real outputs must not change, bit for
    # bit, from those of all-zero padding, and nothing is NaN or inf
    # (padded outputs included: padded inputs are replaced on entry).
    if case["pad"] == "noise":
        pad = rng.normal(size=shape).astype("float32") * 1e3
    else:
        pad = np.full(shape, case["pad"], "float32")
    clean = np.where(mask[..., None], x, 0.0).astype("float32")
    dirty = np.where(mask[..., None], x, pad).astype("float32")
    out, grads = value_and_gradients(block, dirty, **kwargs)
    assert all_finite(out, *grads)
    # Real outputs get no gradient from padded inputs.
    _, grads = value_and_gradients(block, dirty, loss_mask=mask, **kwargs)
    assert all_finite(*grads)
    assert (to_numpy(grads[0])[~mask] == 0).all()
    np.testing.assert_array_equal(
        to_numpy(block(clean, **kwargs))[mask], to_numpy(out)[mask]
    )


@FUZZ
@given(encoder_cases(), st.sampled_from(["none", "3d", "4d", "4d-one-head"]))
def test_attention_matches_numpy_reference(case, attention_mask_kind):
    rng = np.random.default_rng(case["seed"])
    b, s, h = case["batch"], case["length"], case["heads"]
    x = rng.normal(size=(b, s, case["width"])).astype("float32")
    mask = padding_mask(case["lengths"], s)
    attention_mask = {
        "none": None,
        "3d": rng.random((b, s, s)) > 0.3,
        "4d": rng.random((b, h, s, s)) > 0.3,
        "4d-one-head": rng.random((b, 1, s, s)) > 0.3,
    }[attention_mask_kind]
    layer = MultiHeadSelfAttention(h)
    layer.build(x.shape)
    randomize_weights(layer, case["seed"])
    out, scores = layer(
        x,
        mask=mask,
        attention_mask=attention_mask,
        use_causal_mask=case["causal"],
        return_attention_scores=True,
    )
    out, scores = to_numpy(out), to_numpy(scores)
    head_dim = case["width"] // h
    expected, expected_scores = ref.attention(
        x,
        attention_weights(layer),
        h,
        head_dim,
        head_dim,
        mask=mask,
        attention_mask=attention_mask,
        causal=case["causal"],
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def _functional_encoder(explicit_mask=False, num_blocks=2):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=not explicit_mask)(tokens)
    x = PositionalEncoding(16)(x)
    mask = keras.ops.not_equal(tokens, 0) if explicit_mask else None
    for _ in range(num_blocks):
        x = EncoderBlock(2, 16)(x, mask=mask)
    return keras.Model(tokens, x)


def test_implicit_mask_equals_explicit_mask():
    implicit = _functional_encoder(explicit_mask=False)
    explicit = _functional_encoder(explicit_mask=True)
    explicit.set_weights(implicit.get_weights())
    tokens = np.array([[3, 5, 7, 0, 0], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    real = tokens != 0
    a = implicit.predict(tokens, verbose=0)
    b = explicit.predict(tokens, verbose=0)
    np.testing.assert_allclose(a[real], b[real], atol=1e-6)
    # And the implicit mask is really used: padding changes nothing.
    unpadded = implicit.predict(tokens[:1, :3], verbose=0)
    np.testing.assert_allclose(unpadded[0], a[0, :3], atol=1e-5)
    assert np.isfinite(a).all()


def test_all_sources_combine_with_and():
    """Implicit mask, mask, attention_mask and causal: one AND-ed mask."""
    rng = np.random.default_rng(0)
    b, s, d = 2, 5, 8
    tokens = np.array([[1, 2, 3, 4, 0], [5, 6, 7, 8, 9]])
    embedded = keras.layers.Embedding(10, d, mask_zero=True)(tokens)
    explicit = padding_mask([5, 3], s)
    attention_mask = rng.random((b, s, s)) > 0.3
    layer = MultiHeadSelfAttention(2)
    _, scores = layer(
        embedded,
        mask=explicit,
        attention_mask=attention_mask,
        use_causal_mask=True,
        return_attention_scores=True,
    )
    pad = (tokens != 0) & explicit
    allowed = ref.full_mask(
        b, s, 2, mask=pad, attention_mask=attention_mask, causal=True
    )
    scores = to_numpy(scores)
    assert (scores[~allowed] == 0).all()
    rows = allowed.any(-1)
    np.testing.assert_allclose(scores.sum(-1)[rows], 1.0, rtol=1e-5)

    # The same, with everything folded into one attention_mask by hand.
    _, by_hand = layer(
        to_numpy(embedded),
        attention_mask=allowed,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(to_numpy(by_hand), scores, atol=1e-6)


def test_implicit_mask_is_kept_with_attention_mask_tensor():
    """Keras does not fill `mask` when two tensors are passed; we do."""
    tokens = np.array([[1, 2, 0, 0]])
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    _, scores = MultiHeadSelfAttention(1)(
        embedded,
        attention_mask=np.ones((1, 4, 4), bool),
        return_attention_scores=True,
    )
    assert (to_numpy(scores)[0, 0, :, 2:] == 0).all()


def test_integer_masks_mean_the_same_as_boolean():
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")
    mask = padding_mask([3, 1], 4)
    am = np.random.default_rng(1).random((2, 4, 4)) > 0.5
    layer = MultiHeadSelfAttention(2)
    np.testing.assert_array_equal(
        to_numpy(layer(x, mask=mask, attention_mask=am)),
        to_numpy(
            layer(
                x, mask=mask.astype("int32"), attention_mask=am.astype("int8")
            )
        ),
    )


@pytest.mark.parametrize(
    "policy", ["float32", "mixed_float16", "mixed_bfloat16"]
)
@pytest.mark.parametrize("norm_first", [False, True])
def test_fully_padded_rows_are_finite(policy, norm_first):
    x = (np.random.default_rng(0).normal(size=(3, 6, 8)) * 100).astype(
        "float32"
    )
    mask = padding_mask([0, 6, 2], 6)
    block = EncoderBlock(2, 16, norm_first=norm_first, dtype=policy)
    out, grads = value_and_gradients(block, x, mask=mask, use_causal_mask=True)
    assert all_finite(out, *grads)
    _, scores = block(x, mask=mask, return_attention_scores=True)
    assert keras.backend.standardize_dtype(scores.dtype) == (
        block.compute_dtype
    )
    assert (keras.ops.convert_to_numpy(scores)[0] == 0).all()


def test_large_scores_do_not_overflow_in_float16():
    """Scores beyond float16's range (65504) stay finite and correct."""
    x = np.full((1, 3, 4), 300.0, "float32")
    layer = MultiHeadSelfAttention(
        1, kernel_initializer="ones", dtype="mixed_float16"
    )
    out = layer(x, mask=np.array([[True, True, False]]))
    assert all_finite(out)  # raw scores are 300*4*300*4/2 = 720000


CALL_ERRORS = [
    (
        {"mask": np.ones((2, 5, 1), bool)},
        ValueError,
        r"Expected `mask` of rank 2, \(batch, sequence\). "
        r"Received: mask.shape=\(2, 5, 1\)",
    ),
    (
        {"mask": np.ones((2, 4), bool)},
        ValueError,
        r"`mask` has shape \(2, 4\), which does not match the "
        r"inputs: axis 1 should be 5",
    ),
    (
        {"mask": np.ones((2, 5), "float32")},
        TypeError,
        r"`mask` must be boolean or integer \(True/1 = attend\). "
        r"Received: mask.dtype=float32",
    ),
    (
        {"attention_mask": np.ones((2, 5), bool)},
        ValueError,
        r"Expected `attention_mask` of rank 3, \(batch, S, S\), or "
        r"rank 4, \(batch, num_heads, S, S\). Received: "
        r"attention_mask.shape=\(2, 5\)",
    ),
    (
        {"attention_mask": np.ones((2, 5, 4), bool)},
        ValueError,
        r"axis 2 should be 5",
    ),
    (
        {"attention_mask": np.ones((2, 3, 5, 5), bool)},
        ValueError,
        r"axis 1 should be 2 or 1",
    ),
    (
        {"attention_mask": np.ones((3, 5, 5), bool)},
        ValueError,
        r"axis 0 should be 2 or 1",
    ),
]


@pytest.mark.parametrize("cls", [MultiHeadSelfAttention, EncoderBlock])
@pytest.mark.parametrize("kwargs,error,message", CALL_ERRORS)
def test_bad_masks_are_clear_errors(cls, kwargs, error, message):
    layer = cls(2, 8) if cls is EncoderBlock else cls(2)
    x = np.zeros((2, 5, 8), "float32")
    with pytest.raises(error, match=message):
        layer(x, **kwargs)
    # The same check runs symbolically, when a functional model is built.
    symbolic = {
        k: keras.KerasTensor(v.shape, dtype=v.dtype.name)
        for k, v in kwargs.items()
    }
    with pytest.raises(error, match=message):
        layer(keras.KerasTensor(x.shape), **symbolic)


@pytest.mark.parametrize(
    "cls", [MultiHeadSelfAttention, EncoderBlock, PositionalEncoding]
)
def test_bad_inputs_are_clear_errors(cls):
    layer = {
        EncoderBlock: lambda: cls(2, 8),
        MultiHeadSelfAttention: lambda: cls(2),
        PositionalEncoding: lambda: cls(10),
    }[cls]()
    with pytest.raises(ValueError, match=r"Expected `inputs` of rank 3"):
        layer(np.zeros((2, 8), "float32"))
    layer.build((2, 5, 8))
    with pytest.raises(TypeError, match=r"Expected floating-point `inputs`"):
        layer(np.zeros((2, 5, 8), "int32"))
    # Also when a functional model is built.
    with pytest.raises(TypeError, match=r"Expected floating-point `inputs`"):
        layer(keras.KerasTensor((2, 5, 8), dtype="int32"))


def test_masked_softmax_equals_the_naive_fill_in_float32():
    """The quantization-friendly fill changes no float result."""
    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(2, 3, 6, 6)) * 50).astype("float32")
    mask = rng.random((2, 1, 6, 6)) > 0.4
    mask[0, 0, 2] = False  # a query with no key at all
    probs = keras.ops.convert_to_numpy(masked_softmax(scores, mask))
    naive = np.where(mask, scores, -1e9)
    naive = np.exp(naive - naive.max(-1, keepdims=True))
    naive = np.where(mask, naive / naive.sum(-1, keepdims=True), 0.0)
    np.testing.assert_allclose(probs, naive, atol=1e-7)
    assert (probs[~np.broadcast_to(mask, probs.shape)] == 0).all()
    assert (probs[0, :, 2] == 0).all()


@pytest.mark.parametrize("flash_attention", [None, False])
@pytest.mark.parametrize(
    "policy", ["float32", "mixed_float16", "mixed_bfloat16"]
)
@pytest.mark.parametrize("pad", [1e5, 3e38, np.inf, -np.inf, np.nan])
def test_any_padded_content_in_any_precision(pad, policy, flash_attention):
    """Padded slots holding values that overflow the compute dtype (1e5 in
    float16), inf or NaN change no real output and give no NaN anywhere."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 8)).astype("float32")
    mask = padding_mask([6, 2, 0], 6)
    block = EncoderBlock(2, 16, flash_attention=flash_attention, dtype=policy)
    pooling = SentencePooling(dtype=policy)
    clean = np.where(mask[..., None], x, 0.0).astype("float32")
    dirty = np.where(mask[..., None], x, np.float32(pad)).astype("float32")
    out_clean = block(clean, mask=mask)
    out_dirty = block(dirty, mask=mask)
    assert all_finite(out_dirty, pooling(out_dirty, mask=mask))
    np.testing.assert_array_equal(
        to_numpy(keras.ops.cast(out_dirty, "float32"))[mask],
        to_numpy(keras.ops.cast(out_clean, "float32"))[mask],
    )
    np.testing.assert_array_equal(
        to_numpy(pooling(out_dirty, mask=mask)),
        to_numpy(pooling(out_clean, mask=mask)),
    )


def _skip_one_path_backend(flash_attention):
    if flash_attention is None and keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow has the materialised path only")


@pytest.mark.parametrize("flash_attention", [None, False])
@pytest.mark.parametrize(
    "policy", ["float32", "mixed_float16", "mixed_bfloat16"]
)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_bias_where_masked_reaches_nothing(
    value, causal, policy, flash_attention
):
    """NaN or +-inf in `attention_bias` at masked keys and padded queries
    changes no real output and no gradient (the loss reads real positions
    only): the masks override the bias, on both paths."""
    _skip_one_path_backend(flash_attention)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    mask = padding_mask([5, 3], 5)
    allowed = mask[:, None, :, None] & mask[:, None, None, :]
    if causal:
        allowed = allowed & np.tril(np.ones((5, 5), bool))
    bias = rng.normal(size=(2, 2, 5, 5)).astype("float32")
    hostile = np.where(allowed, bias, np.float32(value))
    block = EncoderBlock(2, 16, flash_attention=flash_attention, dtype=policy)
    kwargs = {"mask": mask, "use_causal_mask": causal, "loss_mask": mask}
    out, grads = value_and_gradients(block, x, attention_bias=bias, **kwargs)
    out_h, grads_h = value_and_gradients(
        block, x, attention_bias=hostile, **kwargs
    )
    assert all_finite(*grads_h)
    out, out_h = (
        to_numpy(keras.ops.cast(o, "float32"))[mask] for o in (out, out_h)
    )
    assert np.isfinite(out_h).all()
    np.testing.assert_array_equal(out_h, out)
    for g, g_h in zip(grads, grads_h, strict=True):
        np.testing.assert_array_equal(
            to_numpy(keras.ops.cast(g_h, "float32")),
            to_numpy(keras.ops.cast(g, "float32")),
        )


@pytest.mark.parametrize("flash_attention", [None, False])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bias_beyond_the_half_range_saturates(sign, policy, flash_attention):
    """A bias of +-1e5 (+-inf once Keras casts it to float16) gives what it
    gives in float32, within half-precision rounding, with finite
    gradients: the saturation works on both sides."""
    _skip_one_path_backend(flash_attention)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    mask = padding_mask([5, 3], 5)
    bias = np.zeros((1, 2, 5, 5), "float32")
    bias[..., 1] = sign * 1e5  # Key 1 is real in every sequence.
    full = EncoderBlock(2, 16, flash_attention=flash_attention)
    half = EncoderBlock(2, 16, flash_attention=flash_attention, dtype=policy)
    expected = to_numpy(full(x, mask=mask, attention_bias=bias))[mask]
    half(x, mask=mask)
    half.set_weights(full.get_weights())
    out, grads = value_and_gradients(
        half, x, loss_mask=mask, mask=mask, attention_bias=bias
    )
    assert all_finite(*grads)
    out = to_numpy(keras.ops.cast(out, "float32"))[mask]
    atol = {"mixed_float16": 2e-2, "mixed_bfloat16": 1e-1}[policy]
    np.testing.assert_allclose(out, expected, atol=atol)


@pytest.mark.parametrize("magnitude", [1e10, 1e20, 1e30, 1e38])
def test_masked_softmax_at_any_real_score_magnitude(magnitude):
    """Masked keys get exactly zero weight and each real row sums to 1,
    however large the real scores (`min - 128` alone rounds back to the
    minimum beyond about 2^33)."""
    scores = np.array(
        [
            [-magnitude, 0.0, 5.0],  # one real key, hugely negative
            [magnitude, -magnitude, 0.0],
            [-magnitude, -magnitude, 1.0],  # two equal real keys
            [magnitude, magnitude, magnitude],  # nothing real
        ],
        "float32",
    )
    mask = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
    probs = to_numpy(masked_softmax(scores, mask))
    assert np.isfinite(probs).all()
    assert (probs[~mask] == 0).all()
    np.testing.assert_allclose(probs[:3].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[0, 0], 1.0)
    np.testing.assert_allclose(probs[2, :2], 0.5)


MASK_FORMS = {
    "list of bools": lambda m: m.tolist(),
    "list of ints": lambda m: m.astype(int).tolist(),
    "uint8 array": lambda m: m.astype("uint8"),
    "int64 array": lambda m: m.astype("int64"),
}


@pytest.mark.parametrize("form", MASK_FORMS)
@pytest.mark.parametrize(
    "make", [lambda: MultiHeadSelfAttention(2), lambda: EncoderBlock(2, 8)]
)
def test_masks_as_lists_and_arrays_of_any_integer_dtype(make, form):
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")
    mask = padding_mask([3, 1], 4)
    am = np.random.default_rng(1).random((2, 4, 4)) > 0.3
    layer = make()
    expected = to_numpy(layer(x, mask=mask, attention_mask=am))
    got = layer(
        x,
        mask=MASK_FORMS[form](mask),
        attention_mask=MASK_FORMS[form](am),
    )
    np.testing.assert_array_equal(to_numpy(got), expected)
    pooled = SentencePooling()(x, mask=MASK_FORMS[form](mask))
    np.testing.assert_array_equal(
        to_numpy(pooled), to_numpy(SentencePooling()(x, mask=mask))
    )


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: MultiHeadSelfAttention(2, name="attn"), "attn"),
        (lambda: EncoderBlock(2, 8, name="blk"), "blk"),
        (lambda: PositionalEncoding(8, name="pos"), "pos"),
    ],
)
def test_width_other_than_built_is_a_clear_error(make, name):
    layer = make()
    layer(np.zeros((1, 3, 16), "float32"))
    message = (
        rf"layer '{name}' is incompatible with the layer: expected axis -1 "
        r"of input shape to have value 16, but received input with shape "
        r"\(1, 3, 8\)"
    )
    with pytest.raises(ValueError, match=message):
        layer(np.zeros((1, 3, 8), "float32"))
    with pytest.raises(ValueError, match=r"expected axis -1 .* value 16"):
        layer(np.zeros((1, 3, 32), "float32"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: MultiHeadSelfAttention(2),
        lambda: EncoderBlock(2, 8),
        lambda: EncoderBlock(2, 8, norm_first=True),
        lambda: PositionalEncoding(4),
        lambda: SentencePooling(),
        lambda: SentencePooling("cls"),
    ],
)
@pytest.mark.parametrize("with_mask", [False, True])
def test_zero_length_sequences_give_finite_outputs(make, with_mask):
    x = np.zeros((2, 0, 8), "float32")
    kwargs = {"mask": np.zeros((2, 0), bool)} if with_mask else {}
    layer = make()
    if isinstance(layer, PositionalEncoding):
        kwargs = {}
    out = to_numpy(layer(x, **kwargs))
    assert out.shape in ((2, 0, 8), (2, 8))
    assert np.isfinite(out).all()
    if out.shape == (2, 8):
        assert (out == 0).all()
