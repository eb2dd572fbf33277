"""Sublayer factories shared by the public layers."""

import re

import keras

from keras_encoder import _checks


class _Dense(keras.layers.Dense):
    """`keras.layers.Dense` whose LoRA factor A is drawn afresh after its
    weights are loaded.

    A saved `Dense` holds its merged kernel, and Keras's loader sets both
    LoRA factors to zero; with A and B both zero every LoRA gradient is
    zero, and a reloaded model could never train its adapters again.
    Redrawing A (He uniform, as `enable_lora`'s default) and keeping B at
    zero changes no output. Never serialized on its own: the layers create
    it in `build`.
    """

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.lora_enabled:
            draw = keras.initializers.HeUniform()
            self.lora_kernel_a.assign(draw(self.lora_kernel_a.shape))

    def quantize(self, mode=None, type_check=True, config=None):
        # `Dense.quantize` refuses subclasses (they may change `call`);
        # this one changes weight loading only, so it quantizes as Dense.
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


def enable_lora(projections, rank, lora_alpha, a_initializer, b_initializer):
    """`Dense.enable_lora` on each of `projections` (built `Dense` layers)."""
    for dense in projections:
        dense.enable_lora(
            rank,
            lora_alpha=lora_alpha,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
        )


def freeze_all_but_lora(layer):
    """Make every weight of `layer` but the LoRA factors non-trainable:
    `Dense.enable_lora` freezes the kernel only, and LoRA fine-tuning
    trains the low-rank factors alone (biases and norms included)."""
    for weight in layer.weights:
        if not weight.path.endswith(LORA_WEIGHTS):
            weight.trainable = False


def check_lora_call(layer, rank, lora_alpha):
    """Validate an `enable_lora` call on one of the package's layers."""
    rank = _checks.positive_int("rank", rank)
    lora_alpha = _checks.positive_float("lora_alpha", lora_alpha, True)
    if not layer.built:
        raise ValueError(
            f"Cannot enable LoRA on layer '{layer.name}' before it is built "
            "(call it on data, or build it, first)"
        )
    if layer.lora_rank:
        raise ValueError(
            f"LoRA is already enabled on layer '{layer.name}' (rank "
            f"{layer.lora_rank}); it can be enabled once"
        )
    if getattr(layer, "_in_block", None):
        raise ValueError(
            f"Layer '{layer.name}' is the attention of EncoderBlock "
            f"'{layer._in_block}': call the block's enable_lora, whose "
            "config records LoRA (the attention's alone would not be saved)"
        )
    if any(d.quantization_mode == "float8" for d in layer._projections()):
        raise ValueError(
            f"Cannot enable LoRA on layer '{layer.name}': it is quantized to "
            "float8, whose Keras Dense does not support LoRA (int8 and int4 "
            "do)"
        )
    return rank, lora_alpha
