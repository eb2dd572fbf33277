"""Plain NumPy (float64) Transformer-encoder maths, written from the paper.

Independent of the package: it shares no code with it, only the weight
layout (Dense kernels of shape (in, out)), and computes in float64.
"""

import math

import numpy as np


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def full_mask(
    batch,
    length,
    num_heads,
    mask=None,
    attention_mask=None,
    causal=False,
    window=None,
):
    """Boolean (B, H, S, S) mask: True where query i may attend to key j."""
    allowed = np.ones((batch, num_heads, length, length), dtype=bool)
    if window is not None:
        positions = np.arange(length)
        allowed &= abs(positions[:, None] - positions[None, :]) < window
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        allowed &= mask[:, None, :, None] & mask[:, None, None, :]
    if attention_mask is not None:
        am = np.asarray(attention_mask, dtype=bool)
        if am.ndim == 3:
            am = am[:, None]
        allowed &= am
    if causal:
        allowed &= np.tril(np.ones((length, length), dtype=bool))
    return allowed


def rotary(x, max_wavelength, fraction=1.0):
    """RoPE on (B, S, D) features of one head, as 2-D rotations.

    With R = the even number of rotated features and h = R / 2, feature i
    and feature i + h (i < h) form a plane, rotated at position p by the
    angle p * max_wavelength ** (-2 i / R) (Su et al., 2021, in the
    "rotate-half" pairing of GPT-NeoX and Hugging Face). Features past R
    are left alone.
    """
    x = np.array(x, dtype=np.float64)
    rotated = 2 * (int(x.shape[-1] * fraction + 1e-9) // 2)
    half = rotated // 2
    out = x.copy()
    for p in range(x.shape[1]):
        for i in range(half):
            angle = p * max_wavelength ** (-2.0 * i / rotated)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, p, i], x[:, p, i + half]
            out[:, p, i] = a * c - b * s
            out[:, p, i + half] = b * c + a * s
    return out


def attention(
    x,
    weights,
    num_heads,
    key_dim,
    value_dim,
    rotary_max_wavelength=None,
    rotary_fraction=1.0,
    bias=None,
    **mask_kwargs,
):
    """Multi-head self-attention. Returns (output, probabilities).

    `weights` = [Wq, bq, Wk, bk, Wv, bv, Wo, bo]. Queries with nothing to
    attend to get all-zero probabilities. `bias`, broadcastable to
    (B, H, S, S), is added to the scaled scores; masks override it.
    """
    x = np.asarray(x, dtype=np.float64)
    wq, bq, wk, bk, wv, bv, wo, bo = (np.float64(w) for w in weights)
    batch, length, _ = x.shape
    allowed = full_mask(batch, length, num_heads, **mask_kwargs)
    if bias is not None:
        bias = np.broadcast_to(
            np.float64(bias), (batch, num_heads, length, length)
        )
    out_heads, probs = [], []
    for h in range(num_heads):
        ks = slice(h * key_dim, (h + 1) * key_dim)
        vs = slice(h * value_dim, (h + 1) * value_dim)
        q = x @ wq[:, ks] + bq[ks]
        k = x @ wk[:, ks] + bk[ks]
        v = x @ wv[:, vs] + bv[vs]
        if rotary_max_wavelength is not None:
            q = rotary(q, rotary_max_wavelength, rotary_fraction)
            k = rotary(k, rotary_max_wavelength, rotary_fraction)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(key_dim)
        if bias is not None:
            scores = scores + bias[:, h]
        ok = allowed[:, h]
        scores = np.where(ok, scores, -np.inf)
        row_has_key = ok.any(-1, keepdims=True)
        scores = np.where(row_has_key, scores, 0.0)
        p = np.where(ok, softmax(scores), 0.0)
        probs.append(p)
        out_heads.append(p @ v)
    context = np.concatenate(out_heads, axis=-1)
    return context @ wo + bo, np.stack(probs, axis=1)


def layer_norm(x, gamma, beta, epsilon):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def rms_norm(x, gamma, epsilon):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + epsilon) * gamma


ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: (
        0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2)))
    ),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
}


def encoder_block(
    x,
    weights,
    num_heads,
    key_dim,
    activation="relu",
    norm_first=False,
    epsilon=1e-5,
    use_bias=True,
    norm_bias=None,
    feedforward="mlp",
    normalization="layer_norm",
    attention_norm=True,
    **attention_kwargs,
):
    """One encoder block. `weights` in the block's `get_weights()` order:

    the attention's query, key, value and output kernels (each followed by
    its bias when `use_bias`), the attention norm (gamma, then beta when it
    has one; absent without `attention_norm`), W1 (b1), W2 (b2), the
    feed-forward norm. A gated feed-forward (`"geglu"`, `"swiglu"`) has W1
    of width 2 * intermediate: h = first half, gate = second half, and
    computes activation(h) * gate. Padded positions (`mask` False) enter as
    the row +1, -1, +1, ..., whatever they hold.
    """
    x = np.asarray(x, dtype=np.float64)
    if attention_kwargs.get("mask") is not None:
        row = np.where(np.arange(x.shape[-1]) % 2 == 0, 1.0, -1.0)
        mask = np.asarray(attention_kwargs["mask"], bool)
        x = np.where(mask[..., None], x, row)
    take = iter([np.float64(w) for w in weights]).__next__
    if norm_bias is None:
        norm_bias = use_bias and normalization == "layer_norm"

    def dense_weights():
        kernel = take()
        return kernel, take() if use_bias else np.zeros(kernel.shape[1])

    def norm():
        gamma = take()
        if normalization == "rms_norm":
            return lambda h: rms_norm(h, gamma, epsilon)
        beta = take() if norm_bias else 0.0
        return lambda h: layer_norm(h, gamma, beta, epsilon)

    attn_w = [w for _ in range(4) for w in dense_weights()]
    norm1 = norm() if attention_norm else (lambda h: h)
    w1, b1 = dense_weights()
    w2, b2 = dense_weights()
    norm2 = norm()
    act = ACTIVATIONS[activation]

    def attend(h):
        out, _ = attention(
            h, attn_w, num_heads, key_dim, key_dim, **attention_kwargs
        )
        return out

    def feed_forward(h):
        h = h @ w1 + b1
        if feedforward == "mlp":
            return act(h) @ w2 + b2
        half = h.shape[-1] // 2
        return (act(h[..., :half]) * h[..., half:]) @ w2 + b2

    if norm_first:
        x = x + attend(norm1(x))
        return x + feed_forward(norm2(x))
    x = norm1(x + attend(x))
    return norm2(x + feed_forward(x))


def sinusoid(length, width):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)."""
    table = np.zeros((length, width))
    for pos in range(length):
        for i in range(width):
            angle = pos / 10000 ** (2 * (i // 2) / width)
            table[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return table
