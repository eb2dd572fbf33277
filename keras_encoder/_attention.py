"""The attention core: two paths to `softmax(Q K^T * scale) V`, one contract.

Both take projected (B, S, H, D) queries, keys and values and an
`_masking.AttentionMask`, and return the (B, S, H, Dv) context. Query rows
with nothing to attend to (padded queries, fully padded sequences, rows an
`attention_mask` empties) get exactly 0 on both paths, and padded keys get
exactly zero weight, so padded content never reaches a real position.

- `materialized` computes the (B, H, S, S) scores and probabilities in
  float32 (also under mixed precision) with the quantization-friendly fill
  of `masked_softmax`. It is the only path that can return the
  probabilities or apply dropout to them, and the one TensorFlow and TFLite
  use: TensorFlow has no fused kernel, and int8 TFLite depends on the fill.
- `fused` calls `keras.ops.dot_product_attention`, which runs the backend's
  fused kernel: cuDNN flash attention on JAX + GPU, the splash kernel on
  TPU, `scaled_dot_product_attention` on torch (whose CPU kernel needs
  memory linear in S, not S^2).
"""

import numpy as np
from keras import backend
from keras import ops

# Masked scores are replaced by a fill below the row's smallest score:
# `min + min(min, 0) - margin`, at least `margin` below every score of the
# row. With the default margin of 128, exp(fill - max) <= exp(-128)
# underflows to exactly 0 in float32: masked keys get exactly zero weight
# (and zero gradient) before the final `where`, for real scores of any
# magnitude (doubling a negative minimum moves it far more than its
# rounding; `min - 128` alone rounds back onto the minimum beyond about
# 2^33). The fill stays within 128 plus the row's own low end of the real
# scores, so int8 calibration keeps their resolution; a constant like -1e9
# would stretch the range until every real score quantizes to one level
# (uniform attention).
FILL_MARGIN = 128.0
# The largest finite value of each float dtype: biases and scores saturate
# at +-HIGHEST (an overflow to +-inf would make NaN of a softmax row).
HIGHEST = {
    "float16": float(np.finfo("float16").max),
    "bfloat16": 3.3895313892515355e38,
    "float32": float(np.finfo("float32").max),
    "float64": float(np.finfo("float64").max),
}


def masked_softmax(scores, mask=None, rows=None, fill_margin=FILL_MARGIN):
    """Softmax over the last axis in float32, exactly 0 where masked.

    Rows with no attendable key come out all zero, not uniform and not NaN.

    Args:
        scores: (..., S_q, S_k) scores.
        mask: boolean mask broadcastable to `scores`, True = may attend,
            or None.
        rows: optional boolean (..., S_q, 1) mask of the query rows that
            may attend to anything, when `mask` holds only the keys' side
            (a padding-only mask: (B, 1, 1, S) keys, (B, 1, S, 1) rows).
            Defaults to `mask` itself.
        fill_margin: float, how far below the row's smallest score masked
            scores are filled. Defaults to `FILL_MARGIN` (128), at which
            their exp underflows to exactly 0 in float32.
    """
    scores = ops.cast(scores, "float32")
    if scores.shape[-1] == 0:
        return scores  # Zero-length sequences: nothing to normalise.
    if scores.shape[-1] == 1:
        # A single key gets all the weight (Keras warns on a size-1 softmax).
        probs = ops.ones_like(scores)
    elif mask is None:
        return ops.softmax(scores, axis=-1)
    else:
        # exp(fill - max) <= exp(-128) is exactly 0 in float32: masked keys
        # get no weight in any row that has a real key.
        low = ops.min(scores, axis=-1, keepdims=True)
        # Saturated at float32's lowest: below about -1.7e38 the sum would
        # overflow to -inf, and a row of -inf gives NaN gradients.
        fill = ops.maximum(
            low + ops.minimum(low, 0.0) - fill_margin, -HIGHEST["float32"]
        )
        probs = ops.softmax(ops.where(mask, scores, fill), axis=-1)
    if mask is None:
        return probs
    return ops.where(mask if rows is None else rows, probs, 0.0)


def materialized(
    query,
    key,
    value,
    mask,
    *,
    scale,
    dropout=None,
    training=None,
    fill_margin=FILL_MARGIN,
):
    """Attention with explicit scores. Returns (context, probabilities).

    Args:
        query, key: (B, S, H, Dk) tensors.
        value: (B, S, H, Dv) tensor.
        mask: an `_masking.AttentionMask`.
        scale: float, multiplies the queries before the product.
        dropout: optional `keras.layers.Dropout` for the probabilities.
        training: bool, whether dropout is active.
        fill_margin: float, passed to `masked_softmax`.

    Returns:
        (B, S, H, Dv) context and (B, H, S, S) probabilities, both in the
        dtype of `value`.
    """
    dtype = backend.standardize_dtype(value.dtype)
    query = query * ops.cast(scale, dtype)
    # Scores and softmax in float32, so float16 cannot overflow them.
    scores = ops.einsum(
        "bqhd,bkhd->bhqk", ops.cast(query, "float32"), ops.cast(key, "float32")
    )  # (B, H, S, S)
    if mask.bias is not None:
        scores = ops.clip(
            scores + _bias_where_allowed(mask, "float32"),
            -HIGHEST["float32"],
            HIGHEST["float32"],
        )
    if mask.padding is not None and mask.pairwise is None and not mask.causal:
        # Padding only: keys and query rows apart, no (B, 1, S, S) mask.
        pad = ops.expand_dims(mask.padding, 1)  # (B, 1, S)
        probs = masked_softmax(
            scores,
            ops.expand_dims(pad, 2),  # (B, 1, 1, S) keys
            rows=ops.expand_dims(pad, 3),  # (B, 1, S, 1) queries
            fill_margin=fill_margin,
        )
    else:
        probs = masked_softmax(scores, mask.dense(), fill_margin=fill_margin)
    probs = ops.cast(probs, dtype)
    weights = probs if dropout is None else dropout(probs, training=training)
    context = ops.einsum("bhqk,bkhd->bqhd", weights, value)  # (B, S, H, Dv)
    return context, probs


def fused(query, key, value, mask, *, scale):
    """Attention through `keras.ops.dot_product_attention`.

    The kernel never sees a query row with nothing to attend to (such rows
    are opened to every key, so no kernel divides by zero or returns NaN),
    and those rows are set to exactly 0 afterwards. A padding-only mask
    goes to the kernel as a (B, 1, 1, S) key mask (broadcast to
    (B, 1, S, S) on JAX, whose cuDNN kernel needs the full query axis), and
    a causal-only mask as `is_causal`.

    An `attention_bias` goes to the kernel as its `bias`, with the masks
    merged into it as -inf (torch's kernel takes a bias or a mask, not
    both); every row keeps at least one finite entry, so -inf only ever
    gives exactly zero weight. Rows with nothing to attend to get a zero
    bias, whatever the caller's bias holds there.

    Args and returns as `materialized`, without probabilities: the
    (B, S, H, Dv) context.
    """
    kernel_mask = None
    kernel_bias = None
    keep = None  # (B, S, 1 or H, 1): False for query rows that attend nothing
    is_causal = False
    dtype = backend.standardize_dtype(query.dtype)
    if mask.bias is not None:
        # Saturated at the dtype's range: an infinite bias (a float16
        # overflow of Keras's autocast) would make NaN of its row.
        kernel_bias = ops.clip(
            ops.cast(mask.bias, dtype), -HIGHEST[dtype], HIGHEST[dtype]
        )
        dense = mask.dense()
        if dense is not None:
            # Masked keys -inf (zero weight); rows that attend nothing
            # opened to every key with a zero bias (set to 0 afterwards).
            attends = ops.any(dense, axis=-1, keepdims=True)  # (B, H, S, 1)
            fill = ops.cast(ops.where(attends, float("-inf"), 0.0), dtype)
            kernel_bias = ops.where(dense, kernel_bias, fill)
            keep = ops.transpose(attends, (0, 2, 1, 3))
    elif mask.pairwise is None and not (
        mask.causal and mask.padding is not None
    ):
        is_causal = mask.causal
        if mask.padding is not None:
            pad = mask.padding  # (B, S)
            keys = ops.logical_or(
                pad, ops.logical_not(ops.any(pad, axis=1, keepdims=True))
            )
            kernel_mask = ops.expand_dims(ops.expand_dims(keys, 1), 1)
            if backend.backend() == "jax":
                kernel_mask = ops.broadcast_to(
                    kernel_mask, (mask.batch, 1, mask.length, mask.length)
                )
            keep = ops.expand_dims(ops.expand_dims(pad, 2), 3)
    else:
        kernel_mask, keep = _open_empty_rows(mask.dense())
    upcast = dtype == "float16" and _jax_on_cpu()
    if upcast:
        # jit(grad(jax.nn.dot_product_attention)) in float16 fails on CPU:
        # "The precision 'F16_F16_F32' is not supported by dot_general on
        # CPU" (JAX 0.10.2). CPU has no flash kernel to lose: float32.
        query, key, value = (
            ops.cast(t, "float32") for t in (query, key, value)
        )
        if kernel_bias is not None:
            kernel_bias = ops.cast(kernel_bias, "float32")
    context = ops.dot_product_attention(
        query,
        key,
        value,
        bias=kernel_bias,
        mask=kernel_mask,
        scale=scale,
        is_causal=is_causal,
    )
    if upcast:
        context = ops.cast(context, dtype)
    if keep is not None:
        context = ops.where(keep, context, ops.zeros_like(context))
    return context


def _bias_where_allowed(mask, dtype):
    """The `attention_bias` of `mask` in `dtype`, 0 wherever the masks
    forbid attention: a NaN or infinite bias at a masked key or a padded
    query then reaches neither the outputs nor the gradients."""
    bias = ops.cast(mask.bias, dtype)
    dense = mask.dense()
    return bias if dense is None else ops.where(dense, bias, 0.0)


def _jax_on_cpu():
    if backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def _open_empty_rows(dense):
    """For a boolean (B or 1, 1 or H, S, S) mask: the mask with every query
    row that attends nothing opened to all keys (what the kernel sees), and
    the (B, S, 1 or H, 1) rows to keep afterwards."""
    attends = ops.any(dense, axis=-1, keepdims=True)
    opened = ops.logical_or(dense, ops.logical_not(attends))
    return opened, ops.transpose(attends, (0, 2, 1, 3))


def fused_unsupported_reason(
    key_dim,
    value_dim,
    return_attention_scores=False,
    dropout_active=False,
):
    """Why the fused path cannot run here, or None when it can."""
    if backend.backend() == "tensorflow":
        return (
            "the TensorFlow backend has no fused attention kernel (use the "
            "JAX or torch backend)"
        )
    if backend.backend() == "jax" and key_dim != value_dim:
        return (
            f"JAX's fused kernel needs value_dim equal to key_dim, got "
            f"{value_dim} and {key_dim}"
        )
    if return_attention_scores:
        return "the fused kernel cannot return attention scores"
    if dropout_active:
        return "the fused kernel cannot apply attention dropout"
    return None
