import keras
from keras import ops

from keras_encoder import _checks
from keras_encoder import _layers
from keras_encoder.multi_head_self_attention import MultiHeadSelfAttention

FEEDFORWARDS = ("mlp", "geglu", "swiglu")
DEFAULT_ACTIVATIONS = {"mlp": "relu", "geglu": "gelu", "swiglu": "silu"}
NORMALIZATIONS = ("layer_norm", "rms_norm")


@keras.saving.register_keras_serializable(package="keras_encoder")
class EncoderBlock(_layers.SelfAttentionLayer):
    """One Transformer encoder block: self-attention, then feed-forward.

    Two sublayers, each with dropout on its output, a residual connection
    and layer normalisation: multi-head self-attention, then a position-wise
    feed-forward network `Dense(intermediate_dim, activation)` followed by
    `Dense(width)` (or a gated one, GeGLU or SwiGLU, see `feedforward`).
    By default normalisation comes after each residual sum
    (post-LN, as in Vaswani et al., 2017):
    `x = LayerNorm(x + Dropout(Sublayer(x)))`. With `norm_first=True` it
    comes before each sublayer (pre-LN, as in GPT-2 and
    `torch.nn.TransformerEncoderLayer(norm_first=True)`):
    `x = x + Dropout(Sublayer(LayerNorm(x)))`.

    Masking follows the package's single contract, exactly as in
    `MultiHeadSelfAttention`: True (or 1) means "attend", and the implicit
    Keras mask, `mask`, `attention_mask` and `use_causal_mask` combine with
    logical AND. Padded content never changes outputs at real positions,
    a fully padded sequence gives finite outputs and gradients, and the
    padding mask is passed on, so blocks stack in functional models.

    Args:
        num_heads: int, number of attention heads.
        intermediate_dim: int, hidden size of the feed-forward network.
        dropout: float in [0, 1), dropout rate on each sublayer's output.
            Defaults to `0.0`.
        attention_dropout: float in [0, 1), dropout rate on the attention
            probabilities. Defaults to `0.0`.
        activation: activation of the feed-forward network (of its gate
            for a gated one), a Keras activation name (`"relu"`, `"gelu"`
            (exact), `"silu"`, ...) or a callable. Defaults to `None`:
            `"relu"` for `feedforward="mlp"`, `"gelu"` for `"geglu"`,
            `"silu"` for `"swiglu"`.
        norm_first: bool, pre-LN when `True`, post-LN when `False`.
            Defaults to `False`.
        layer_norm_epsilon: float, epsilon of both normalisations.
            Defaults to `1e-5` (PyTorch's default).
        key_dim: int, size of each attention head. Defaults to `None`,
            meaning `width // num_heads`.
        use_bias: bool, whether the dense layers have biases. Defaults to
            `True`.
        kernel_initializer: initializer for all dense kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer for all dense biases. Defaults to
            `"zeros"`.
        flash_attention: `None`, `True` or `False`: whether self-attention
            runs through the backend's fused kernel
            (`keras.ops.dot_product_attention`); see
            `MultiHeadSelfAttention`. `None` uses it on the JAX and torch
            backends whenever the scores are not requested and attention
            dropout is inactive. Defaults to `None`.
        feedforward: `"mlp"`, `"geglu"` or `"swiglu"`. `"mlp"` is
            `Dense(width)(activation(Dense(intermediate_dim)(x)))`; the
            gated forms (Shazeer, 2020) project to `2 * intermediate_dim`
            at once, split that into `(h, gate)` (in this order, as
            ModernBERT's `Wi`) and compute
            `Dense(width)(activation(h) * gate)`. Defaults to `"mlp"`.
        normalization: `"layer_norm"` or `"rms_norm"`
            (`keras.layers.RMSNormalization`: no centring, no bias).
            Defaults to `"layer_norm"`.
        norm_bias: bool, whether layer normalisations have a bias (beta).
            Defaults to `None`, meaning `use_bias`: a bias-free block
            (`use_bias=False`, as ModernBERT) has bias-free norms too.
        attention_norm: bool, whether the attention sublayer has its
            normalisation. `False` drops it, as in ModernBERT's first
            layer, whose input is the (already normalised) embeddings.
            Defaults to `True`.
        rotary_max_wavelength, rotary_fraction, sliding_window: rotary
            position embeddings and local attention in the self-attention,
            see `MultiHeadSelfAttention`. Default to `None`, `1.0` and
            `None` (none).
        lora_rank, lora_alpha: build with LoRA enabled on all six dense
            layers (see `enable_lora`); kept in the config. Default to
            `None`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape (B, S, D).
        mask: optional boolean or integer tensor of shape (B, S), True for
            real tokens. ANDed with the implicit Keras mask of `inputs`.
        attention_mask: optional boolean or integer tensor of shape
            (B, S, S) or (B, num_heads, S, S), True where query i may attend
            to key j.
        use_causal_mask: bool, whether query i may only attend to keys
            j <= i. Defaults to `False`.
        attention_bias: optional float tensor of shape (S, S) or
            (B or 1, num_heads or 1, S, S), added to the attention scores
            (e.g. from `AlibiBias`); masks override it. See
            `MultiHeadSelfAttention`.
        return_attention_scores: bool, whether to also return the attention
            probabilities. Defaults to `False`.
        training: bool, whether dropout is active.

    Returns:
        A tensor of the input's shape, or `(output, scores)` with `scores`
        of shape (B, num_heads, S, S) when `return_attention_scores=True`.

    Example:

    >>> tokens = keras.Input((None,), dtype="int32")
    >>> x = keras.layers.Embedding(1000, 64, mask_zero=True)(tokens)
    >>> x = PositionalEncoding(max_length=128)(x)
    >>> x = EncoderBlock(num_heads=4, intermediate_dim=128)(x)
    >>> x = EncoderBlock(num_heads=4, intermediate_dim=128)(x)
    >>> pooled = SentencePooling(normalize=False)(x)  # masked mean
    >>> model = keras.Model(tokens, keras.layers.Dense(2)(pooled))
    >>> tuple(model.output.shape)
    (None, 2)

    A 2024-style block (ModernBERT's local layers): pre-LN, bias-free,
    GeGLU, rotary positions, a 128-token window:

    >>> block = EncoderBlock(
    ...     num_heads=4,
    ...     intermediate_dim=96,
    ...     norm_first=True,
    ...     use_bias=False,
    ...     feedforward="geglu",
    ...     rotary_max_wavelength=10000.0,
    ...     sliding_window=65,
    ... )
    >>> tuple(block(np.ones((2, 200, 64), "float32")).shape)
    (2, 200, 64)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Xiong et al., 2020](https://arxiv.org/abs/2002.04745) (pre-LN)
        - [Shazeer, 2020](https://arxiv.org/abs/2002.05202) (GLU variants)
        - [Zhang and Sennrich, 2019](https://arxiv.org/abs/1910.07467)
          (RMSNorm)
        - [Warner et al., 2024](https://arxiv.org/abs/2412.13663)
          (ModernBERT)
    """

    # The self-attention layer the block builds: a subclass of
    # `MultiHeadSelfAttention` (e.g. one overriding `_compute_attention`)
    # plugs a new attention scheme into every block of a subclass.
    attention_class = MultiHeadSelfAttention

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        attention_dropout=0.0,
        activation=None,
        norm_first=False,
        layer_norm_epsilon=1e-5,
        key_dim=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        flash_attention=None,
        feedforward="mlp",
        normalization="layer_norm",
        norm_bias=None,
        attention_norm=True,
        rotary_max_wavelength=None,
        rotary_fraction=1.0,
        sliding_window=None,
        lora_rank=None,
        lora_alpha=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = _checks.positive_int("num_heads", num_heads)
        self.intermediate_dim = _checks.positive_int(
            "intermediate_dim", intermediate_dim
        )
        self.dropout = _checks.rate("dropout", dropout)
        self.attention_dropout = _checks.rate(
            "attention_dropout", attention_dropout
        )
        self.feedforward = _checks.choice(
            "feedforward", feedforward, FEEDFORWARDS
        )
        if activation is None:
            activation = DEFAULT_ACTIVATIONS[self.feedforward]
        self.activation = _checks.activation(activation)
        self.normalization = _checks.choice(
            "normalization", normalization, NORMALIZATIONS
        )
        self.norm_first = bool(norm_first)
        self.layer_norm_epsilon = _checks.positive_float(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        self._store_shared_arguments(locals(), "attention_dropout")
        norm_bias = _checks.optional_bool("norm_bias", norm_bias)
        self.norm_bias = self.use_bias if norm_bias is None else norm_bias
        if self.normalization == "rms_norm" and self.norm_bias:
            if norm_bias:
                raise ValueError(
                    "Received an invalid value for argument `norm_bias`: "
                    'normalization="rms_norm" has no bias. Received: '
                    "norm_bias=True"
                )
            self.norm_bias = False
        self.attention_norm = _checks.boolean("attention_norm", attention_norm)

    @classmethod
    def from_config(cls, config):
        # Saved before `norm_bias` (and `normalization`) existed: norms
        # always had a bias then, whatever use_bias said.
        config = dict(config)
        if "normalization" not in config:
            config.setdefault("norm_bias", True)
        return super().from_config(config)

    def _norm(self, name, input_shape):
        if self.normalization == "rms_norm":
            norm = keras.layers.RMSNormalization(
                epsilon=self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=name,
            )
        else:
            norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon,
                center=self.norm_bias,
                dtype=self.dtype_policy,
                name=name,
            )
        norm.build(input_shape)
        return norm

    def build(self, input_shape):
        width = input_shape[-1]
        if len(input_shape) != 3 or width is None:
            raise ValueError(
                "Expected `inputs` of rank 3, (batch, sequence, features), "
                f"with a known feature size. Received: input_shape="
                f"{tuple(input_shape)}"
            )
        dtype = self.dtype_policy
        common = {
            "dtype": dtype,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
        }
        # Self-attention sublayer.
        self.attention = self.attention_class(
            num_heads=self.num_heads,
            dropout=self.attention_dropout,
            name="self_attention",
            **_checks.attention_config(self),
            **common,
        )
        self.attention.build(input_shape)
        # Its LoRA goes through the block's enable_lora and config.
        self.attention.set_lora_owner(self.name)
        self.attention_layer_norm = None
        if self.attention_norm:
            self.attention_layer_norm = self._norm(
                "self_attention_layer_norm", input_shape
            )
        self.attention_output_dropout = keras.layers.Dropout(
            self.dropout, dtype=dtype, name="self_attention_dropout"
        )
        # Feed-forward sublayer. A gated one projects to (h, gate) at once,
        # and applies the activation itself, after the split.
        gated = self.feedforward != "mlp"
        self.intermediate_dense = _layers.dense(
            self.intermediate_dim * (2 if gated else 1),
            activation=None if gated else self.activation,
            name="feedforward_intermediate_dense",
            **common,
        )
        # The feed-forward network acts on flattened (B * S, D) rows.
        self.intermediate_dense.build((None, width))
        self.output_dense = _layers.dense(
            width, name="feedforward_output_dense", **common
        )
        self.output_dense.build((None, self.intermediate_dim))
        self.feedforward_layer_norm = self._norm(
            "feedforward_layer_norm", input_shape
        )
        self.feedforward_output_dropout = keras.layers.Dropout(
            self.dropout, dtype=dtype, name="feedforward_dropout"
        )
        self.input_spec = keras.InputSpec(axes={-1: width})
        self.built = True
        self._build_lora()

    def call_on_rows(
        self, rows, attention_mask, training=None, return_attention_scores=False
    ):
        """The block on flattened rows: (B * S, D) -> (B * S, D); see
        `SelfAttentionLayer.call_on_rows` (in `_layers`)."""
        x = residual = rows
        if self.norm_first and self.attention_layer_norm is not None:
            x = self.attention_layer_norm(x)
        x, scores = self.attention.call_on_rows(
            x,
            attention_mask,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        x = residual + self.attention_output_dropout(x, training=training)
        if not self.norm_first and self.attention_layer_norm is not None:
            x = self.attention_layer_norm(x)

        residual = x
        if self.norm_first:
            x = self.feedforward_layer_norm(x)
        x = self.intermediate_dense(x)
        if self.feedforward != "mlp":
            h, gate = ops.split(x, 2, axis=-1)
            x = self.activation(h) * gate
        x = self.output_dense(x)
        x = residual + self.feedforward_output_dropout(x, training=training)
        if not self.norm_first:
            x = self.feedforward_layer_norm(x)
        return x, scores

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation": keras.activations.serialize(self.activation),
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "feedforward": self.feedforward,
                "normalization": self.normalization,
                "norm_bias": self.norm_bias,
                "attention_norm": self.attention_norm,
            }
        )
        return config

    def projection_layers(self):
        """Every `Dense` sublayer (the attention's four, the feed-forward
        network's two): what Keras quantization and LoRA act on."""
        return self.attention.projection_layers() + [
            self.intermediate_dense,
            self.output_dense,
        ]
