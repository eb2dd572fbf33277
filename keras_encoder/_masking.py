"""The masking contract, in one place.

Every mask means the same thing everywhere: True (or a non-zero integer)
means "may attend" / "is a real token". All sources combine with logical AND:

- the implicit Keras mask carried by the inputs (`Embedding(mask_zero=True)`
  and any layer that passes a mask on), shape (B, S);
- an explicit `mask=` call argument, shape (B, S);
- an explicit `attention_mask=`, shape (B, S, S) or (B, H, S, S) where H is
  the number of heads or 1;
- `use_causal_mask=True`: position i attends to positions j <= i;
- a layer's `sliding_window=w`: position i attends to j with |i - j| < w.

An additive `attention_bias` (ALiBi, relative positions) is not a mask:
it shifts the scores of the keys a query may attend to, and masks override
it.

A padding mask hides padded keys from every query and marks padded queries
as fully masked. Masked scores are replaced with `where` (never an additive
constant, which overflows in float16), softmax runs in float32, and
probabilities at masked positions are set to exactly zero after the softmax.
A query with no key to attend to therefore gets an all-zero attention row:
finite values and finite gradients, never NaN.

Only `keras.ops` is used, and no `x[..., None]` indexing: on dynamic shapes
that lowers to a Flex StridedSlice in TFLite; `ops.expand_dims` does not.
"""

import dataclasses

import numpy as np
from keras import backend
from keras import ops

try:  # Reads masks on every backend (JAX arrays cannot carry attributes).
    from keras.src.backend import get_keras_mask as keras_mask
except ImportError:  # pragma: no cover - older or reorganised Keras.

    def keras_mask(x):
        """The implicit Keras mask that `x` carries, or None."""
        return getattr(x, "_keras_mask", None)


def _dtype_name(x):
    """The portable dtype name ("bool", "int32", ...) on every backend."""
    return backend.standardize_dtype(x.dtype)


def _as_bool(mask):
    return mask if _dtype_name(mask) == "bool" else ops.cast(mask, "bool")


def as_mask(mask):
    """`mask` as a tensor: Python lists and NumPy arrays are accepted, as
    Keras's own layers accept them. None stays None."""
    if mask is None or hasattr(mask, "shape"):
        return mask
    return ops.convert_to_tensor(np.asarray(mask))


def _check_mask_dtype(name, mask):
    dtype = _dtype_name(mask)
    if dtype != "bool" and "int" not in dtype:
        raise TypeError(
            f"`{name}` must be boolean or integer (True/1 = attend). "
            f"Received: {name}.dtype={dtype}"
        )


def _check_dims(name, shape, expected):
    """Raise if a known dimension of `shape` disagrees with `expected`.

    `expected` holds a dimension, None (anything goes) or a tuple of allowed
    values for each axis.
    """
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if got is None or want is None:
            continue
        allowed = want if isinstance(want, tuple) else (want,)
        if None not in allowed and got not in allowed:
            raise ValueError(
                f"`{name}` has shape {tuple(shape)}, which does not match the "
                f"inputs: axis {axis} should be "
                f"{' or '.join(str(a) for a in allowed)}. Received: "
                f"{name}.shape={tuple(shape)}"
            )


def _check_rank(name, tensor, ranks, expected):
    """`tensor`'s rank, or a `ValueError` when it is not one of `ranks`
    ("Expected `name` {expected}. Received: ...")."""
    rank = len(tensor.shape)
    if rank not in ranks:
        raise ValueError(
            f"Expected `{name}` {expected}. Received: "
            f"{name}.shape={tuple(tensor.shape)}"
        )
    return rank


def check_inputs(inputs):
    """The (B, S, D) float input every layer of the package takes."""
    if len(inputs.shape) != 3:
        raise ValueError(
            "Expected `inputs` of rank 3, (batch, sequence, features). "
            f"Received: inputs.shape={tuple(inputs.shape)}"
        )
    dtype = _dtype_name(inputs)
    if "float" not in dtype:
        raise TypeError(
            "Expected floating-point `inputs` (embed token ids first, e.g. "
            f"with keras.layers.Embedding). Received: inputs.dtype={dtype}"
        )


def _padding_sources(inputs, mask):
    """The distinct (B, S) padding masks: explicit, then implicit."""
    sources = []
    for m in (as_mask(mask), keras_mask(inputs)):
        if m is not None and not any(m is seen for seen in sources):
            sources.append(m)
    return sources


def first_padding_mask(inputs, mask=None):
    """The explicit `mask`, else the implicit Keras mask, else None.

    A (B, S) tensor that stacked layers share, so reading the sequence
    shape from it lets a graph compute that shape once for all of them.
    """
    sources = _padding_sources(inputs, mask)
    return sources[0] if sources else None


def check_padding_masks(inputs, mask=None):
    """Validate (B, S) inputs' padding masks: explicit and implicit."""
    batch, length = inputs.shape[0], inputs.shape[1]
    for m in _padding_sources(inputs, mask):
        if len(m.shape) != 2:
            raise ValueError(
                "Expected `mask` of rank 2, (batch, sequence). "
                f"Received: mask.shape={tuple(m.shape)}"
            )
        _check_mask_dtype("mask", m)
        _check_dims("mask", m.shape, (batch, length))


def check_call(
    inputs, num_heads, mask=None, attention_mask=None, attention_bias=None
):
    """Validate a layer call's inputs and masks against the contract."""
    check_inputs(inputs)
    check_padding_masks(inputs, mask)
    batch, length = inputs.shape[0], inputs.shape[1]
    if attention_bias is not None:
        _check_bias(attention_bias, batch, num_heads, length)
    attention_mask = as_mask(attention_mask)
    if attention_mask is None:
        return
    rank = _check_rank(
        "attention_mask",
        attention_mask,
        (3, 4),
        "of rank 3, (batch, S, S), or rank 4, (batch, num_heads, S, S)",
    )
    _check_mask_dtype("attention_mask", attention_mask)
    heads = () if rank == 3 else ((num_heads, 1),)
    _check_dims(
        "attention_mask",
        attention_mask.shape,
        ((batch, 1), *heads, length, length),
    )


def _check_bias(bias, batch, num_heads, length):
    bias = as_mask(bias)
    # Rank 3 is refused: broadcasting reads it as (H, S, S), while a rank-3
    # attention_mask is (B, S, S).
    rank = _check_rank(
        "attention_bias",
        bias,
        (2, 4),
        "of shape (S, S) or (batch or 1, num_heads or 1, S, S)",
    )
    if "float" not in _dtype_name(bias):
        raise TypeError(
            "`attention_bias` must be floating-point (it is added to the "
            f"scores). Received: attention_bias.dtype={_dtype_name(bias)}"
        )
    expected = ((batch, 1), (num_heads, 1), (length, 1), (length, 1))
    _check_dims("attention_bias", bias.shape, expected[4 - rank :])


def bias_4d(bias):
    """`attention_bias` as a rank-4 tensor, or None."""
    bias = as_mask(bias)
    if bias is None:
        return None
    while len(bias.shape) < 4:
        bias = ops.expand_dims(bias, 0)
    return bias


def padding_mask(inputs, mask=None):
    """The (B, S) padding mask: explicit `mask` AND the implicit Keras mask.

    Returns None when neither is set.
    """
    merged = None
    for m in _padding_sources(inputs, mask):
        m = _as_bool(m)
        merged = m if merged is None else ops.logical_and(merged, m)
    return merged


def padding_row(width):
    """The (width,) float32 row that stands in for every padded position:
    +1, -1, +1, ... (mean 0, variance 1, like a normalised token).

    Not zeros: a zero row has zero variance, so a post-LN block's
    LayerNorm would compute rsqrt(epsilon) (316 at 1e-5) there, and int8
    calibration would stretch that tensor's range over it until real rows
    lost their resolution (cosine 0.95 instead of 0.996 on a random
    2-block encoder).
    """
    return np.where(np.arange(width) % 2 == 0, 1.0, -1.0).astype("float32")


def replace_padded(inputs, padding):
    """`inputs` with every padded position replaced by `padding_row`.

    Whatever sits in a padded slot (any magnitude, inf, NaN, or a float16
    overflow) then cannot reach a real position, not even as 0 * inf, and
    gets exactly zero gradient. `padding` is (B, S) boolean or None.
    """
    if padding is None:
        return inputs
    # (1, ..., 1, width): a constant of the inputs' rank, which
    # ai-edge-quantizer needs to give it the output's int16 scale.
    row = padding_row(inputs.shape[-1])
    row = row.reshape((1,) * (len(inputs.shape) - 1) + row.shape)
    row = ops.cast(row, inputs.dtype)
    return ops.where(ops.expand_dims(padding, -1), inputs, row)


def prepare_call(
    inputs,
    num_heads,
    mask=None,
    attention_mask=None,
    use_causal_mask=False,
    attention_bias=None,
):
    """The prologue of an attention layer's call: validate the inputs and
    masks, collect the masks, replace padded positions.

    Returns:
        `(inputs, masks)`: the inputs with padded positions replaced by
        `padding_row`, and the call's `AttentionMask`.
    """
    check_call(inputs, num_heads, mask, attention_mask, attention_bias)
    masks = AttentionMask.for_call(
        inputs, mask, attention_mask, use_causal_mask, attention_bias
    )
    return replace_padded(inputs, masks.padding), masks


def causal_mask(length):
    """(S, S) boolean lower-triangular mask: True where key <= query."""
    positions = ops.arange(length)
    return ops.greater_equal(
        ops.expand_dims(positions, 1), ops.expand_dims(positions, 0)
    )


def band_mask(length, window):
    """(1, 1, S, S) boolean sliding-window mask: True where
    |query - key| < window (`keras.layers.MultiHeadAttention`'s
    `sliding_window`)."""
    positions = ops.arange(length)
    distance = ops.abs(
        ops.expand_dims(positions, 1) - ops.expand_dims(positions, 0)
    )
    band = ops.less(distance, window)
    return ops.expand_dims(ops.expand_dims(band, 0), 0)


@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Every mask source of one attention call, kept apart.

    The sources stay separate so that each attention path can use the
    cheapest form: the fused path sends a padding-only mask to the kernel
    as a (B, 1, 1, S) key mask and causality as `is_causal`, and never
    builds a (B, 1, S, S) tensor for them; the materialised path, and any
    override of `MultiHeadSelfAttention._compute_attention`, can ask for
    the merged (B, 1 or H, S, S) boolean mask with `dense()`.

    Build it with `AttentionMask.for_call` after `check_call`.

    Attributes:
        batch: the batch size B, a Python int or a scalar tensor.
        length: the sequence length S, a Python int or a scalar tensor.
        padding: (B, S) boolean mask, True for real tokens, or None.
        pairwise: (B, 1 or H, S, S) boolean mask, True where query i may
            attend to key j, or None.
        causal: bool, whether query i may only attend to keys j <= i.
        bias: (B or 1, H or 1, S or 1, S or 1) float additive bias of the
            scores (`attention_bias`), or None. Not a mask: the masks
            override it.
    """

    batch: object
    length: object
    padding: object = None
    pairwise: object = None
    causal: bool = False
    bias: object = None

    @classmethod
    def for_call(
        cls,
        inputs,
        mask=None,
        attention_mask=None,
        use_causal_mask=False,
        attention_bias=None,
    ):
        """Collect a layer call's masks: implicit, `mask`, `attention_mask`
        and `use_causal_mask`, and its `attention_bias`."""
        pairwise = None
        attention_mask = as_mask(attention_mask)
        if attention_mask is not None:
            pairwise = _as_bool(attention_mask)
            if len(attention_mask.shape) == 3:
                pairwise = ops.expand_dims(pairwise, 1)  # (B, 1, S, S)
        padding = padding_mask(inputs, mask)
        # (B, S) from the padding mask when there is one: stacked layers
        # share it, so a graph (and a TFLite model) computes their shape
        # once instead of once per layer.
        shape = ops.shape(inputs if padding is None else padding)
        return cls(
            batch=shape[0],
            length=shape[1],
            padding=padding,
            pairwise=pairwise,
            causal=bool(use_causal_mask),
            bias=bias_4d(attention_bias),
        )

    def with_pairwise(self, extra):
        """A copy with `extra` ((B or 1, 1 or H, S, S), boolean) ANDed in.

        The hook for schemes that restrict attention further, such as a
        sliding window.
        """
        extra = _as_bool(extra)
        if self.pairwise is not None:
            extra = ops.logical_and(self.pairwise, extra)
        return dataclasses.replace(self, pairwise=extra)

    def dense(self):
        """All sources merged into one boolean (B or 1, 1 or H, S, S) mask.

        A padding mask hides padded keys from every query, and gives padded
        queries nothing to attend to. Returns None when nothing is masked,
        so the unmasked path stays lean.
        """
        merged = None
        if self.padding is not None:
            pad = ops.expand_dims(self.padding, 1)  # (B, 1, S)
            merged = ops.logical_and(
                ops.expand_dims(pad, 3),  # (B, 1, S, 1)
                ops.expand_dims(pad, 2),  # (B, 1, 1, S)
            )
        if self.pairwise is not None:
            merged = _and(merged, self.pairwise)
        if self.causal:
            causal = causal_mask(self.length)
            causal = ops.expand_dims(ops.expand_dims(causal, 0), 0)
            merged = _and(merged, causal)  # (1, 1, S, S) alone
        return merged


def _and(a, b):
    return b if a is None else ops.logical_and(a, b)
