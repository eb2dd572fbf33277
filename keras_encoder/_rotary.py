"""Rotary position embeddings (RoPE, Su et al., 2021), rotate-half form.

Queries and keys of each head are rotated by an angle proportional to
their position, so that their dot product depends on the relative offset
only. The convention is Hugging Face's `apply_rotary_pos_emb` (also
keras-hub's `RotaryEmbedding`, GPT-NeoX, Llama, ModernBERT): the first
`rotary_dim` features of a head are split into two halves (x1, x2) and

    rotated = x * cos(angles) + concat(-x2, x1) * sin(angles),

with `angles[p, i] = p * max_wavelength ** (-2 i / rotary_dim)`, each
frequency used for both halves. Features past `rotary_dim` pass unrotated
(a partial rotation, as GPT-NeoX's `rotary_pct`).

The inverse frequencies are a NumPy constant computed in float32 exactly
as Hugging Face computes them, and the angles are positions times those
frequencies in float32 (one rounding, as in Hugging Face), so the rotation
matches theirs to float32 rounding of sin and cos. The sin/cos tables are
computed per call from the sequence length: nothing caps the length, and
no per-layer table of `max_length` rows sits in the model (ModernBERT-base
at 8192 positions would carry 2 MiB of tables per layer).
"""

import numpy as np
from keras import backend
from keras import ops


def rotary_dim(head_dim, fraction):
    """The number of rotated features of a head: `head_dim * fraction`
    rounded down to an even number (with a tolerance for float error:
    100 * 0.58 is 57.99999999999999 in floating point, and gives 58)."""
    return 2 * (int(head_dim * fraction + 1e-9) // 2)


def head_frequencies(head_dim, fraction, max_wavelength):
    """The inverse frequencies of a head of `head_dim` features rotated at
    `fraction` (`rotary_fraction`); a `ValueError` when it leaves fewer
    than 2 features to rotate."""
    dim = rotary_dim(head_dim, fraction)
    if dim < 2:
        raise ValueError(
            "Received an invalid value for argument `rotary_fraction`: it "
            f"leaves {dim} of the {head_dim} features of a head to rotate "
            f"(at least 2 are needed). Received: rotary_fraction={fraction}"
        )
    return inverse_frequencies(dim, max_wavelength)


def inverse_frequencies(dim, max_wavelength):
    """(dim // 2,) float32: 1 / max_wavelength ** (2 i / dim), rounded as
    Hugging Face's `compute_default_rope_parameters` rounds it in float32:
    float32 exponents, the power rounded to float32, then a float32
    reciprocal (bit-identical to torch's for all but about 1 in 500
    frequencies of common head sizes, and then by 1 ulp)."""
    exponents = np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)
    powers = (np.float64(max_wavelength) ** exponents).astype(np.float32)
    return np.float32(1.0) / powers


def tables(length, inv_freq):
    """(1, S, 1, R) float32 cos and sin of the angles of positions 0..S-1,
    each frequency twice (rotate-half layout)."""
    positions = ops.cast(ops.arange(length), "float32")
    angles = ops.expand_dims(positions, 1) * ops.convert_to_tensor(inv_freq)
    angles = ops.concatenate([angles, angles], axis=-1)  # (S, R)
    angles = ops.expand_dims(ops.expand_dims(angles, 0), 2)  # (1, S, 1, R)
    return ops.cos(angles), ops.sin(angles)


def rotate(x, cos, sin):
    """Rotate the first R features of (B, S, H, D) `x`; compute in float32
    and return `x`'s dtype."""
    dtype = backend.standardize_dtype(x.dtype)
    dim = cos.shape[-1]
    x = ops.cast(x, "float32")
    head_dim = x.shape[-1]
    if dim < head_dim:
        x, passed = ops.split(x, [dim], axis=-1)
    x1, x2 = ops.split(x, 2, axis=-1)
    rotated = x * cos + ops.concatenate([ops.negative(x2), x1], -1) * sin
    if dim < head_dim:
        rotated = ops.concatenate([rotated, passed], axis=-1)
    return ops.cast(rotated, dtype)
