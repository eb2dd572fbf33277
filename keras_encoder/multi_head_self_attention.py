import math

import keras
from keras import ops

from keras_encoder import _attention
from keras_encoder import _checks
from keras_encoder import _layers
from keras_encoder import _masking
from keras_encoder import _rotary

# False after `keras.config.disable_flash_attention()`, else None or True
# (a Keras without the switch: always None).
_flash_attention_switch = getattr(
    keras.config, "is_flash_attention_enabled", lambda: None
)


@keras.saving.register_keras_serializable(package="keras_encoder")
class MultiHeadSelfAttention(_layers.SelfAttentionLayer):
    """Multi-head scaled dot-product self-attention.

    Projects the inputs to queries, keys and values for each of `num_heads`
    heads, computes `softmax(Q K^T / sqrt(key_dim)) V` per head, concatenates
    the heads and projects back to the input width (Vaswani et al., 2017).

    Masking follows the package's single contract: True (or 1) means
    "attend", and every source is combined with logical AND: the implicit
    Keras mask of `inputs`, `mask`, `attention_mask` and `use_causal_mask`.
    Padded keys get exactly zero weight, and padded queries, and any query
    left with no key to attend to, get an all-zero attention row (so their
    output is the output projection's bias): finite, and padded content
    never reaches real positions. The padding mask is passed on to the
    next layer.

    The attention core (scores, mask, softmax, dropout, weighted sum) is
    one method, `_compute_attention`, that subclasses may override to add
    position schemes or biases: it takes the projected (B, S, H, D)
    queries, keys and values and the call's masks. It has two paths, see
    `flash_attention`: the fused kernel, or explicit float32 scores with a
    masked softmax (also under mixed precision).

    Args:
        num_heads: int, number of attention heads.
        key_dim: int, size of each head for queries and keys. Defaults to
            `None`, meaning `width // num_heads`, where `width` is the last
            dimension of the inputs (which must then divide evenly).
        value_dim: int, size of each head for values. Defaults to `None`,
            meaning `key_dim`.
        dropout: float in [0, 1), dropout rate on the attention
            probabilities. Defaults to `0.0`.
        use_bias: bool, whether the projections have biases. Defaults to
            `True`.
        kernel_initializer: initializer for the projection kernels.
            Defaults to `"glorot_uniform"`.
        bias_initializer: initializer for the projection biases. Defaults
            to `"zeros"`.
        flash_attention: `None`, `True` or `False`, as in
            `keras.layers.MultiHeadAttention`: whether the attention core
            runs through `keras.ops.dot_product_attention`, the backend's
            fused kernel (cuDNN flash attention on JAX + GPU,
            `scaled_dot_product_attention` on torch). `None` uses it
            whenever it can: on the JAX and torch backends, when the scores
            are not requested and attention dropout is inactive, unless
            `keras.config.disable_flash_attention()` was called. `True`
            always uses it and raises a `ValueError` saying why where it
            cannot (on TensorFlow, which has no fused kernel; with
            `dropout > 0`; with `return_attention_scores=True`; on JAX with
            `value_dim` unlike `key_dim`). `False`
            never uses it. Both paths keep the masking contract and agree
            within float rounding. Defaults to `None`.
        rotary_max_wavelength: `None`, or a float > 1: the base of rotary
            position embeddings (RoPE) applied to queries and keys of every
            head after their projections, in Hugging Face's rotate-half
            convention (10000 in RoFormer and Llama; ModernBERT uses 160000
            in global and 10000 in local layers). `None` (the default)
            applies none: positions then come from the inputs, e.g. a
            `PositionalEncoding`.
        rotary_fraction: float in (0, 1], the fraction of each head's
            features that rotate (the rest pass unrotated, as GPT-NeoX's
            `rotary_pct`); the rotated count is rounded down to an even
            number, at least 2. Defaults to `1.0`.
        sliding_window: `None` or a positive int: local attention, as in
            `keras.layers.MultiHeadAttention`: query i attends only to keys
            j with `|i - j| < sliding_window` (a symmetric band), ANDed with
            every other mask. `None` (the default) attends globally.
        lora_rank: `None` or a positive int: build with LoRA enabled at
            this rank (see `enable_lora`); set by `enable_lora` and kept in
            the config, so a reloaded layer is still LoRA-enabled.
            Defaults to `None`.
        lora_alpha: `None` or a positive float, LoRA's scale numerator
            (`None` means `lora_rank`).
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape (B, S, D).
        mask: optional boolean or integer tensor of shape (B, S), True for
            real tokens. ANDed with the implicit Keras mask of `inputs`.
        attention_mask: optional boolean or integer tensor of shape
            (B, S, S) or (B, num_heads, S, S) (the head axis may be 1),
            True where query i may attend to key j.
        use_causal_mask: bool, whether query i may only attend to keys
            j <= i. Defaults to `False`.
        attention_bias: optional float tensor of shape (S, S) or
            (B or 1, num_heads or 1, S, S), e.g. from `AlibiBias`: added
            to the scaled scores before the softmax. Masks override it: a
            masked key gets zero weight whatever its bias. Values below
            the dtype's range saturate at its lowest finite value (under
            mixed precision Keras casts the bias to float16 first).
        return_attention_scores: bool, whether to also return the attention
            probabilities. Defaults to `False`.
        training: bool, whether dropout is active.

    Returns:
        A tensor of shape (B, S, D), or `(output, scores)` with `scores`
        of shape (B, num_heads, S, S) when `return_attention_scores=True`.

    Example:

    >>> layer = MultiHeadSelfAttention(num_heads=4)
    >>> x = np.random.rand(2, 10, 32).astype("float32")
    >>> mask = np.arange(10)[None, :] < np.array([[7], [10]])
    >>> tuple(layer(x, mask=mask).shape)
    (2, 10, 32)

    With rotary positions and a sliding window (as a ModernBERT local
    layer):

    >>> local = MultiHeadSelfAttention(
    ...     num_heads=4, rotary_max_wavelength=10000.0, sliding_window=65
    ... )
    >>> tuple(local(x, mask=mask).shape)
    (2, 10, 32)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Su et al., 2021](https://arxiv.org/abs/2104.09864) (RoPE)
    """

    # How far below a row's smallest score masked scores are filled (see
    # `_attention.masked_softmax`): float outputs do not depend on it, int8
    # TFLite calibration does. A subclass may set another.
    fill_margin = _attention.FILL_MARGIN

    def __init__(
        self,
        num_heads,
        key_dim=None,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        flash_attention=None,
        rotary_max_wavelength=None,
        rotary_fraction=1.0,
        sliding_window=None,
        lora_rank=None,
        lora_alpha=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = _checks.positive_int("num_heads", num_heads)
        self.value_dim = _checks.positive_int("value_dim", value_dim, True)
        self.dropout = _checks.rate("dropout", dropout)
        self._store_shared_arguments(locals(), "dropout")

    def build(self, input_shape):
        width = input_shape[-1]
        if len(input_shape) != 3 or width is None:
            raise ValueError(
                "Expected `inputs` of rank 3, (batch, sequence, features), "
                f"with a known feature size. Received: input_shape="
                f"{tuple(input_shape)}"
            )
        if self.key_dim is None and width % self.num_heads:
            raise ValueError(
                "Received an invalid value for argument `num_heads`: the "
                f"input width {width} must be divisible by num_heads when "
                f"key_dim is not given. Received: num_heads={self.num_heads}"
            )
        self._head_key_dim = self.key_dim or width // self.num_heads
        self._head_value_dim = self.value_dim or self._head_key_dim
        self._inv_freq = None
        if self.rotary_max_wavelength is not None:
            self._inv_freq = _rotary.head_frequencies(
                self._head_key_dim,
                self.rotary_fraction,
                self.rotary_max_wavelength,
            )

        def dense(units, name):
            return _layers.dense(
                units,
                name=name,
                dtype=self.dtype_policy,
                use_bias=self.use_bias,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
            )

        heads = self.num_heads
        # The projections act on flattened (B * S, D) rows.
        self.query_dense = dense(heads * self._head_key_dim, "query")
        self.query_dense.build((None, width))
        self.key_dense = dense(heads * self._head_key_dim, "key")
        self.key_dense.build((None, width))
        self.value_dense = dense(heads * self._head_value_dim, "value")
        self.value_dense.build((None, width))
        self.output_dense = dense(width, "attention_output")
        self.output_dense.build((None, heads * self._head_value_dim))
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self.input_spec = keras.InputSpec(axes={-1: width})
        self.built = True
        self._build_lora()

    def projection_layers(self):
        """The four `Dense` projections (query, key, value, output): what
        Keras quantization and LoRA act on."""
        return [
            self.query_dense,
            self.key_dense,
            self.value_dense,
            self.output_dense,
        ]

    def call_on_rows(
        self, rows, attention_mask, training=None, return_attention_scores=False
    ):
        """Self-attention on flattened rows: (B * S, D) -> (B * S, D).

        The seam for composite layers: `EncoderBlock` calls it so that its
        whole block stays on rows. Rotary positions and the sliding window
        apply here, before `_compute_attention`. Arguments and returns as
        `SelfAttentionLayer.call_on_rows` (in `_layers`).
        """
        batch, length = attention_mask.batch, attention_mask.length
        heads = self.num_heads
        key_dim, value_dim = self._head_key_dim, self._head_value_dim
        query = ops.reshape(
            self.query_dense(rows), (batch, length, heads, key_dim)
        )  # (B, S, H, Dk)
        key = ops.reshape(self.key_dense(rows), (batch, length, heads, key_dim))
        value = ops.reshape(
            self.value_dense(rows), (batch, length, heads, value_dim)
        )  # (B, S, H, Dv)
        if self._inv_freq is not None:
            cos, sin = _rotary.tables(length, self._inv_freq)
            query = _rotary.rotate(query, cos, sin)
            key = _rotary.rotate(key, cos, sin)
        if self.sliding_window is not None:
            attention_mask = attention_mask.with_pairwise(
                _masking.band_mask(length, self.sliding_window)
            )
        context, scores = self._compute_attention(
            query,
            key,
            value,
            attention_mask,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        context = ops.reshape(context, (-1, heads * value_dim))  # (B*S, H*Dv)
        return self.output_dense(context), scores

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask,
        training=None,
        return_attention_scores=False,
    ):
        """The attention core, the seam for position schemes and biases.

        Args:
            query: (B, S, H, Dk) projected queries (rotated, with rotary
                positions), not yet scaled.
            key: (B, S, H, Dk) projected keys.
            value: (B, S, H, Dv) projected values.
            attention_mask: an `AttentionMask` holding the call's padding
                mask, pairwise mask and causal flag, kept apart so the
                fused kernel gets its cheapest form; `.dense()` merges them
                into one boolean (B, 1 or H, S, S) mask, and
                `.with_pairwise(extra)` restricts attention further. Its
                `bias` is the call's additive `attention_bias` (or None).
            training: bool, whether attention dropout is active.
            return_attention_scores: bool, whether to return the
                probabilities.

        Returns:
            `(context, scores)`: the (B, S, H, Dv) context, and the
            (B, H, S, S) probabilities, or None when they were not asked
            for and the fused path ran.
        """
        scale = 1.0 / math.sqrt(self._head_key_dim)
        if self._use_fused(return_attention_scores, training):
            context = _attention.fused(
                query, key, value, attention_mask, scale=scale
            )
            return context, None
        return _attention.materialized(
            query,
            key,
            value,
            attention_mask,
            scale=scale,
            dropout=self.dropout_layer,
            training=training,
            fill_margin=self.fill_margin,
        )

    def _use_fused(self, return_attention_scores, training):
        """Whether this call takes the fused path, per `flash_attention`
        (and, when it is None, `keras.config.disable_flash_attention()`,
        as `keras.layers.MultiHeadAttention` honours it)."""
        if self.flash_attention is False or (
            self.flash_attention is None and _flash_attention_switch() is False
        ):
            return False
        reason = _attention.fused_unsupported_reason(
            self._head_key_dim,
            self._head_value_dim,
            return_attention_scores=return_attention_scores,
            dropout_active=bool(training) and self.dropout > 0,
        )
        if reason is not None and self.flash_attention:
            raise ValueError(
                "Received an invalid value for argument `flash_attention`: "
                f"{reason}. Received: flash_attention=True"
            )
        return reason is None

    def get_config(self):
        config = super().get_config()
        config.update({"value_dim": self.value_dim, "dropout": self.dropout})
        return config
