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
    batch, length, num_heads, mask=None, attention_mask=None, causal=False
):
    """Boolean (B, H, S, S) mask: True where query i may attend to key j."""
    allowed = np.ones((batch, num_heads, length, length), dtype=bool)
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


def attention(x, weights, num_heads, key_dim, value_dim, **mask_kwargs):
    """Multi-head self-attention. Returns (output, probabilities).

    `weights` = [Wq, bq, Wk, bk, Wv, bv, Wo, bo]. Queries with nothing to
    attend to get all-zero probabilities.
    """
    x = np.asarray(x, dtype=np.float64)
    wq, bq, wk, bk, wv, bv, wo, bo = (np.float64(w) for w in weights)
    batch, length, _ = x.shape
    allowed = full_mask(batch, length, num_heads, **mask_kwargs)
    out_heads, probs = [], []
    for h in range(num_heads):
        ks = slice(h * key_dim, (h + 1) * key_dim)
        vs = slice(h * value_dim, (h + 1) * value_dim)
        q = x @ wq[:, ks] + bq[ks]
        k = x @ wk[:, ks] + bk[ks]
        v = x @ wv[:, vs] + bv[vs]
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(key_dim)
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


ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: (
        0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2)))
    ),
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
    **mask_kwargs,
):
    """One encoder block. `weights` in the block's `get_weights()` order:

    8 attention weights, attention LN (gamma, beta), W1, b1, W2, b2,
    feed-forward LN (gamma, beta). Padded positions (`mask` False) enter
    as the row +1, -1, +1, ..., whatever they hold.
    """
    x = np.asarray(x, dtype=np.float64)
    if mask_kwargs.get("mask") is not None:
        row = np.where(np.arange(x.shape[-1]) % 2 == 0, 1.0, -1.0)
        x = np.where(np.asarray(mask_kwargs["mask"], bool)[..., None], x, row)
    attn_w = weights[:8]
    g1, be1, w1, b1, w2, b2, g2, be2 = (np.float64(w) for w in weights[8:])
    act = ACTIVATIONS[activation]

    def attend(h):
        return attention(h, attn_w, num_heads, key_dim, key_dim, **mask_kwargs)[
            0
        ]

    def feed_forward(h):
        return act(h @ w1 + b1) @ w2 + b2

    if norm_first:
        x = x + attend(layer_norm(x, g1, be1, epsilon))
        return x + feed_forward(layer_norm(x, g2, be2, epsilon))
    x = layer_norm(x + attend(x), g1, be1, epsilon)
    return layer_norm(x + feed_forward(x), g2, be2, epsilon)


def sinusoid(length, width):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)."""
    table = np.zeros((length, width))
    for pos in range(length):
        for i in range(width):
            angle = pos / 10000 ** (2 * (i // 2) / width)
            table[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return table
