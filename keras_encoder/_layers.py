"""What the public layers share: sublayer factories, LoRA, and the call of
the self-attention layers."""

import inspect
import re

import keras
from keras import ops

from keras_encoder import _checks
from keras_encoder import _masking


class _Dense(keras.layers.Dense):
    """`keras.layers.Dense` whose LoRA factors are saved apart from the
    kernel, so a LoRA-enabled layer reloads with identical outputs.

    Keras's `Dense` saves LoRA merged into its kernel and loads both
    factors as zero. Merged in float, the outputs barely move; but an int8
    or int4 kernel is dequantized, merged and quantized again, and the
    reloaded layer computes other outputs (a width-8 block after two LoRA
    steps: max abs diff up to 2.7e-2 int8, 6.5e-2 int4). This layer saves
    the kernel (and its scales) as they are, unmerged, under Keras's keys,
    and the factors under their own names (`LORA_WEIGHTS`); it loads them
    back as they were. Weights saved merged (by Keras, or before this
    layer kept the factors apart) still load: the kernel holds LoRA then,
    B is zero and A is drawn afresh (He uniform, as `enable_lora`'s
    default), since with A and B both zero no gradient would reach the
    factors. Never serialized on its own: the layers create it in `build`.
    """

    def save_own_variables(self, store):
        if not self.lora_enabled:
            super().save_own_variables(store)
            return
        # `Dense` saves `kernel` with LoRA merged into it (and an int8 or
        # int4 kernel quantized again); with LoRA off for the call, it
        # saves the kernel and its scales as they are.
        self.lora_enabled = False
        try:
            super().save_own_variables(store)
        finally:
            self.lora_enabled = True
        for name in LORA_WEIGHTS:
            store[name] = getattr(self, name)

    def load_own_variables(self, store):
        saved_apart = LORA_WEIGHTS[0] in store
        if saved_apart and not self.lora_enabled:
            rank = store[LORA_WEIGHTS[0]].shape[-1]
            raise ValueError(
                f"Cannot load the weights of layer '{self.path}': they hold "
                f"LoRA factors of rank {rank}, kept apart from the kernel, "
                "and LoRA is not enabled here: load them into a model whose "
                f"layers have LoRA enabled at rank {rank} (lora_rank={rank})"
            )
        # With LoRA enabled, `Dense` loads the kernel and its scales by
        # index (ignoring the named factors) and zeroes both factors.
        super().load_own_variables(store)
        if not self.lora_enabled:
            return
        if saved_apart:
            for name in LORA_WEIGHTS:
                getattr(self, name).assign(store[name])
        else:
            draw = keras.initializers.HeUniform()
            self.lora_kernel_a.assign(draw(self.lora_kernel_a.shape))

    def quantize(self, mode=None, type_check=True, config=None):
        if mode == "float8" and self.lora_enabled:
            # Keras's float8 `Dense` raises NotImplementedError at every
            # call when LoRA is enabled: refuse before quantizing.
            raise ValueError(
                "Received an invalid value for argument `mode`: layer "
                f"'{self.path}' has LoRA enabled, and Keras's float8 Dense "
                "does not support LoRA (every call would raise "
                "NotImplementedError); int8 and int4 keep LoRA. "
                f"Received: mode={mode}"
            )
        # `Dense.quantize` refuses subclasses (they may change `call`);
        # this one changes weight saving and loading only, so it quantizes
        # as Dense.
        super().quantize(mode, type_check=False, config=config)


def dense(
    units,
    *,
    name,
    dtype,
    use_bias,
    kernel_initializer,
    bias_initializer,
    activation=None,
):
    """A (N, D) -> (N, units) projection with an (in, out) kernel.

    Call it on 2-D rows: the layers flatten (B, S, D) to (B * S, D) once.
    On 2-D inputs `Dense` is one MatMul (one FULLY_CONNECTED in TFLite),
    which TensorFlow runs on its fast GEMM with oneDNN on or off. On 3-D
    inputs `Dense` goes through tensordot (about 20 shape ops per
    projection in TFLite), and `EinsumDense("abc,cd->abd")` becomes a
    broadcasting BatchMatMulV2, which Eigen (oneDNN off) runs at about 60%
    of a MatMul's speed.
    """
    return _Dense(
        units,
        activation=activation,
        use_bias=use_bias,
        kernel_initializer=_checks.clone_initializer(kernel_initializer, name),
        bias_initializer=_checks.clone_initializer(bias_initializer, name),
        dtype=dtype,
        name=name,
    )


def dtype_config(layer, sublayers):
    """`layer`'s serialized dtype for `get_config`.

    Its policy, as Keras saves it; but once `model.quantize(mode)` has
    quantized some of its sublayers (they carry a policy such as
    `"int8_from_float32"`), a `keras.dtype_policies.DTypePolicyMap` from
    their paths to their policies, defaulting to the layer's own. The
    layers pass their policy on to the sublayers they create, so one
    rebuilt from this config creates those sublayers quantized, and their
    saved weights load (keras-hub's backbones do the same).
    """
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return keras.dtype_policies.serialize(policy)
    quantized = {
        _relative_path(layer, sub): sub.dtype_policy
        for sub in sublayers
        if sub.quantization_mode is not None
    }
    if quantized:
        policy = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
        for path, sub_policy in quantized.items():
            # Keyed by the path below the layer, whatever the layer is
            # called or nested in when rebuilt (a Sequential model adds
            # its own name in front; from_config may rename it).
            policy[rf"(.*/)?{re.escape(path)}"] = sub_policy
    return keras.dtype_policies.serialize(policy)


def _relative_path(layer, sub):
    prefix = f"{layer.path}/"
    if not sub.path.startswith(prefix):  # pragma: no cover - Keras change
        raise ValueError(f"{sub.path!r} is not below {layer.path!r}")
    return sub.path[len(prefix) :]


LORA_WEIGHTS = ("lora_kernel_a", "lora_kernel_b")


# The initializer arguments of both attention layers.
_INITIALIZERS = ("kernel_initializer", "bias_initializer")


class SelfAttentionLayer(keras.layers.Layer):
    """What a layer built around self-attention on flattened rows
    (`MultiHeadSelfAttention`, `EncoderBlock`) shares: the call and its
    masking contract, the output spec, the config of the shared arguments,
    LoRA.

    `call` validates the inputs and masks, replaces padded positions,
    flattens (B, S, D) to (B * S, D) rows (where every projection is one
    2-D MatMul) and hands them to the subclass's `call_on_rows`; the mask
    passed on is the padding mask. A subclass has `num_heads`, stores its
    shared arguments with `_store_shared_arguments`, and implements
    `call_on_rows` and `projection_layers` (its `Dense` sublayers, what
    Keras quantization and LoRA act on).
    """

    def _store_shared_arguments(self, arguments, dropout_name):
        """Check and store the constructor arguments both layers take,
        from their `locals()`: `use_bias`, the initializers, the
        `_checks.ATTENTION_OPTIONS` and LoRA's. `dropout_name` names the
        (already stored) rate of attention dropout, which
        `flash_attention=True` refuses."""
        self.use_bias = bool(arguments["use_bias"])
        for name in _INITIALIZERS:
            setattr(self, name, keras.initializers.get(arguments[name]))
        for name, value in _checks.attention_options(arguments).items():
            setattr(self, name, value)
        _checks.fused_without_dropout(
            self.flash_attention, dropout_name, getattr(self, dropout_name)
        )
        self.lora_rank, self.lora_alpha = _checks.lora_options(
            arguments["lora_rank"], arguments["lora_alpha"]
        )
        self.supports_masking = True

    def call(
        self,
        inputs,
        mask=None,
        attention_mask=None,
        use_causal_mask=False,
        attention_bias=None,
        return_attention_scores=False,
        training=None,
    ):
        inputs, masks = _masking.prepare_call(
            inputs,
            self.num_heads,
            mask,
            attention_mask,
            use_causal_mask,
            attention_bias,
        )
        width = inputs.shape[-1]
        batch, length = masks.batch, masks.length
        rows = ops.reshape(inputs, (-1, width))  # (B * S, D)
        outputs, scores = self.call_on_rows(
            rows,
            masks,
            training=training,
            return_attention_scores=return_attention_scores,
        )
        outputs = ops.reshape(outputs, (batch, length, width))  # (B, S, D)
        if return_attention_scores:
            return outputs, scores
        return outputs

    def call_on_rows(
        self, rows, attention_mask, training=None, return_attention_scores=False
    ):
        """The layer on flattened rows: (B * S, D) -> (B * S, D).

        Args:
            rows: the (B * S, D) inputs, padded rows already replaced
                (`_masking.prepare_call`).
            attention_mask: the call's `_masking.AttentionMask`; its
                `batch` and `length` unflatten the rows (a -1 cannot stand
                for B when S is 0).
            training: bool, whether dropout is active.
            return_attention_scores: bool, whether to return the scores.

        Returns:
            `(outputs, scores)`: the (B * S, D) rows, and the (B, H, S, S)
            attention probabilities, or None when they were not asked for.
        """
        raise NotImplementedError

    def get_config(self):
        """The config of the arguments both layers take; each adds its
        own."""
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "use_bias": self.use_bias,
                **{
                    name: keras.initializers.serialize(getattr(self, name))
                    for name in _INITIALIZERS
                },
                **_checks.attention_config(self),
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
            }
        )
        if self.built:
            config["dtype"] = dtype_config(self, self.projection_layers())
        return config

    def compute_mask(self, inputs, mask=None):
        return _masking.padding_mask(inputs, mask)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        # The arguments of `call`, by name, read from its own signature.
        call = inspect.signature(self.call).bind(*args, **kwargs)
        call.apply_defaults()
        arguments = call.arguments
        inputs = arguments["inputs"]
        _masking.check_call(
            inputs,
            self.num_heads,
            arguments["mask"],
            arguments["attention_mask"],
            arguments["attention_bias"],
        )
        outputs = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not arguments["return_attention_scores"]:
            return outputs
        batch, length = inputs.shape[0], inputs.shape[1]
        scores = keras.KerasTensor(
            (batch, self.num_heads, length, length), dtype=self.compute_dtype
        )
        return outputs, scores

    # The composite layer that records this layer's LoRA: see
    # `set_lora_owner`.
    _lora_owner = None

    def projection_layers(self):
        """The `Dense` sublayers: what Keras quantization and LoRA act on."""
        raise NotImplementedError

    def set_lora_owner(self, owner_name):
        """Make the block named `owner_name` (an `EncoderBlock`, or another
        composite layer that holds this one and rebuilds it from its own
        config) the layer that enables and records LoRA here: LoRA enabled
        on this layer alone would not be saved, so `enable_lora` then
        refuses and names the owner."""
        self._lora_owner = owner_name

    def enable_lora(
        self,
        rank,
        lora_alpha=None,
        a_initializer="he_uniform",
        b_initializer="zeros",
    ):
        """Low-rank adaptation (Hu et al., 2021) of `projection_layers()`.

        Each projection gets trainable factors A (in, rank) and B (rank,
        out), B zero at first, and computes `x W + (lora_alpha / rank)
        x A B` (`keras.layers.Dense.enable_lora`); every other weight of
        the layer (kernels, biases, norms) stops training. Saved `.keras`
        files hold `lora_rank` and each projection's kernel and factors
        apart (`_Dense`), so a reloaded layer, quantized (int8, int4) or
        not, gives identical outputs and trains its factors on. Keras's
        float8 Dense has no LoRA: `model.quantize("float8")` refuses a
        LoRA-enabled layer, and this method a float8 one.

        Args:
            rank: int, the rank of the factors.
            lora_alpha: float, the scale numerator. Defaults to `rank`.
            a_initializer, b_initializer: initializers of A and B.
                Default to `"he_uniform"` and `"zeros"`.
        """
        rank = _checks.positive_int("rank", rank)
        lora_alpha = _checks.positive_float("lora_alpha", lora_alpha, True)
        if self._lora_owner is not None:
            raise ValueError(
                f"Layer '{self.name}' is the attention of EncoderBlock "
                f"'{self._lora_owner}': call the block's enable_lora, whose "
                "config records LoRA (the attention's alone would not be "
                "saved)"
            )
        if not self.built:
            raise ValueError(
                f"Cannot enable LoRA on layer '{self.name}' before it is "
                "built (call it on data, or build it, first)"
            )
        if self.lora_rank:
            raise ValueError(
                f"LoRA is already enabled on layer '{self.name}' (rank "
                f"{self.lora_rank}); it can be enabled once"
            )
        if any(
            d.quantization_mode == "float8" for d in self.projection_layers()
        ):
            raise ValueError(
                f"Cannot enable LoRA on layer '{self.name}': it is quantized "
                "to float8, whose Keras Dense does not support LoRA (int8 "
                "and int4 do)"
            )
        self._apply_lora(rank, lora_alpha, a_initializer, b_initializer)
        self.lora_rank, self.lora_alpha = rank, lora_alpha

    def _apply_lora(self, rank, lora_alpha, a_initializer, b_initializer):
        """`Dense.enable_lora` on every projection; then every weight but
        the LoRA factors stops training (`Dense.enable_lora` freezes the
        kernel only, and LoRA fine-tuning trains the factors alone)."""
        for dense in self.projection_layers():
            dense.enable_lora(
                rank,
                lora_alpha=lora_alpha,
                a_initializer=a_initializer,
                b_initializer=b_initializer,
            )
        for weight in self.weights:
            if not weight.path.endswith(LORA_WEIGHTS):
                weight.trainable = False

    def _build_lora(self):
        """At the end of `build`: LoRA at the `lora_rank` of the
        constructor or a saved config."""
        if self.lora_rank:
            self._apply_lora(
                self.lora_rank, self.lora_alpha, "he_uniform", "zeros"
            )
