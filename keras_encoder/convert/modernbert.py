"""Hugging Face ModernBERT checkpoints (`model_type="modernbert"`)."""

import os

import keras

from keras_encoder.convert._common import ACTIVATION
from keras_encoder.convert._common import BOOLEAN
from keras_encoder.convert._common import HF_ACTIVATIONS
from keras_encoder.convert._common import POSITIVE_INT
from keras_encoder.convert._common import POSITIVE_NUMBER
from keras_encoder.convert._common import SIZE_FIELDS
from keras_encoder.convert._common import Converter
from keras_encoder.convert._common import Kind
from keras_encoder.convert._common import apply_blocks
from keras_encoder.convert._common import check_fields
from keras_encoder.convert._common import check_heads
from keras_encoder.convert._common import config_error
from keras_encoder.convert._common import encoder_blocks
from keras_encoder.convert._common import int_input
from keras_encoder.convert._common import model_name
from keras_encoder.convert.checkpoint import Weights
from keras_encoder.convert.checkpoint import port_dense
from keras_encoder.convert.checkpoint import port_norm
from keras_encoder.convert.checkpoint import port_stacked_dense

LAYER_TYPES = ("full_attention", "sliding_attention")


def _rope_parameters(value):
    return value is None or (
        isinstance(value, dict)
        and all(
            key in LAYER_TYPES and (params is None or isinstance(params, dict))
            for key, params in value.items()
        )
    )


def _unscaled(value):
    return value is None or (
        isinstance(value, dict)
        and value.get("rope_type", value.get("type", "default")) == "default"
    )


# config.json fields that change what `ModernBertModel` computes, in
# either form (the Hub's or transformers 5's): field -> (kind, default or
# REQUIRED). The others (dropouts, initializers, the token ids,
# max_position_embeddings, which rotary positions do not need, the
# classifier and decoder heads' fields, deterministic_flash_attn,
# is_decoder, which ModernBertModel ignores) do not change its outputs.
FIELDS = {
    **SIZE_FIELDS,
    "hidden_activation": (ACTIVATION, "gelu"),
    "norm_eps": (POSITIVE_NUMBER, 1e-5),
    "norm_bias": (BOOLEAN, False),
    "attention_bias": (BOOLEAN, False),
    "mlp_bias": (BOOLEAN, False),
    "global_attn_every_n_layers": (POSITIVE_INT, 3),
    "local_attention": (POSITIVE_INT, 128),
    "global_rope_theta": (POSITIVE_NUMBER, 160000.0),
    "local_rope_theta": (POSITIVE_NUMBER, 10000.0),
    "layer_types": (
        Kind(
            f"null or a list of {' and '.join(map(repr, LAYER_TYPES))}",
            lambda v: (
                v is None
                or (isinstance(v, list) and all(t in LAYER_TYPES for t in v))
            ),
        ),
        None,
    ),
    "rope_parameters": (
        Kind(
            "null or an object mapping "
            f"{' and '.join(map(repr, LAYER_TYPES))} to objects (of "
            "rope_type and rope_theta), transformers 5's form",
            _rope_parameters,
        ),
        None,
    ),
    # The Hub's form of scaled RoPE.
    "rope_scaling": (
        Kind(
            "null or of rope_type 'default': scaled rotary positions are "
            "not supported",
            _unscaled,
        ),
        None,
    ),
}

# Each layer type's entry of `rope_parameters`.
ROPE_FIELDS = {
    "rope_type": (
        Kind(
            "'default': scaled rotary positions are not supported",
            lambda v: v == "default",
        ),
        "default",
    ),
    "rope_theta": (POSITIVE_NUMBER, None),
}


def _attention_layers(fields, source):
    """[(rotary base, sliding window or None)] per layer, from the checked
    `FIELDS` of either form of ModernBERT's config.json: the Hub's
    (`global_attn_every_n_layers`, `global_rope_theta`,
    `local_rope_theta`) or transformers 5's (`layer_types`,
    `rope_parameters`)."""
    count = fields["num_hidden_layers"]
    every = fields["global_attn_every_n_layers"]
    types = fields["layer_types"] or [
        "sliding_attention" if i % every else "full_attention"
        for i in range(count)
    ]
    if len(types) != count:
        raise config_error(
            source,
            "layer_types",
            f"a list of num_hidden_layers={count} entries",
            types,
        )
    thetas = {
        "full_attention": fields["global_rope_theta"],
        "sliding_attention": fields["local_rope_theta"],
    }
    for layer_type, params in (fields["rope_parameters"] or {}).items():
        if params is not None:
            rope = check_fields(
                params, ROPE_FIELDS, source, f"rope_parameters.{layer_type}."
            )
            if rope["rope_theta"] is not None:
                thetas[layer_type] = rope["rope_theta"]
    # ModernBERT's window: |i - j| <= local_attention // 2, which is
    # sliding_window = local_attention // 2 + 1 here (|i - j| < window).
    window = fields["local_attention"] // 2 + 1
    return [
        (
            float(thetas[layer_type]),
            window if layer_type == "sliding_attention" else None,
        )
        for layer_type in types
    ]


def convert_backbone_config(
    config: dict, *, source: str = "config.json"
) -> dict:
    """The arguments of the model's layers, from ModernBERT's config.json
    (the Hub's form or transformers 5's).

    Args:
        config: the parsed config.json.
        source: the file, as messages name it. Defaults to
            `"config.json"`.

    Returns:
        A dict: `name`, `vocab_size`, `hidden_dim`, `norm_epsilon` and
        `norm_bias` (of the embeddings' and the final norm) and `blocks`,
        one dict of `EncoderBlock` arguments per layer.

    Raises:
        ValueError: a field of `FIELDS` is missing or holds a value that
            is malformed or not supported; the message names `source`,
            the field and the value.
    """
    fields = check_fields(config, FIELDS, source)
    check_heads(fields, source)
    use_bias = fields["attention_bias"]
    if fields["mlp_bias"] != use_bias:
        raise config_error(
            source,
            "mlp_bias",
            f"equal to attention_bias={use_bias} (EncoderBlock has one "
            "use_bias)",
            fields["mlp_bias"],
        )
    epsilon = fields["norm_eps"]
    norm_bias = fields["norm_bias"]
    block = {
        "num_heads": fields["num_attention_heads"],
        "intermediate_dim": fields["intermediate_size"],
        "activation": HF_ACTIVATIONS[fields["hidden_activation"]],
        "norm_first": True,
        "layer_norm_epsilon": epsilon,
        "use_bias": use_bias,
        "norm_bias": norm_bias,
        "feedforward": "geglu",
    }
    return {
        "name": model_name(config),
        "vocab_size": fields["vocab_size"],
        "hidden_dim": fields["hidden_size"],
        "norm_epsilon": epsilon,
        "norm_bias": norm_bias,
        "blocks": [
            {
                **block,
                # The first layer has no attention norm.
                "attention_norm": i > 0,
                "rotary_max_wavelength": theta,
                "sliding_window": window,
            }
            for i, (theta, window) in enumerate(
                _attention_layers(fields, source)
            )
        ],
    }


def build_encoder(arguments: dict) -> tuple[dict, keras.KerasTensor]:
    """Token embeddings and their norm, pre-LN `EncoderBlock`s, the final
    norm: (inputs by name, last hidden state)."""

    def norm(name):
        return keras.layers.LayerNormalization(
            epsilon=arguments["norm_epsilon"],
            center=arguments["norm_bias"],
            name=name,
        )

    inputs = {name: int_input(name) for name in ("input_ids", "attention_mask")}
    embeddings = keras.layers.Embedding(
        arguments["vocab_size"],
        arguments["hidden_dim"],
        name="token_embeddings",
    )
    x = norm("embeddings_norm")(embeddings(inputs["input_ids"]))
    x = apply_blocks(x, inputs["attention_mask"], arguments["blocks"])
    return inputs, norm("final_norm")(x)


def convert_weights(model: keras.Model, weights: Weights) -> None:
    """Every weight of `build_encoder`'s model, from a `ModernBertModel`'s."""
    weights.port(
        model.get_layer("token_embeddings").embeddings,
        "embeddings.tok_embeddings.weight",
    )
    port_norm(weights, model.get_layer("embeddings_norm"), "embeddings.norm")
    for i, block in enumerate(encoder_blocks(model)):
        prefix = f"layers.{i}."
        attention = block.attention
        # Wqkv rows: all heads' queries, then keys, then values.
        port_stacked_dense(
            weights,
            [attention.query_dense, attention.key_dense, attention.value_dense],
            f"{prefix}attn.Wqkv.weight",
            f"{prefix}attn.Wqkv.bias",
        )
        # mlp.Wi rows: the GeGLU input half, then the gate half, as the
        # block's intermediate kernel splits them.
        for dense, name in (
            (attention.output_dense, "attn.Wo"),
            (block.intermediate_dense, "mlp.Wi"),
            (block.output_dense, "mlp.Wo"),
        ):
            port_dense(weights, dense, prefix + name)
        if block.attention_layer_norm is not None:
            port_norm(weights, block.attention_layer_norm, f"{prefix}attn_norm")
        port_norm(weights, block.feedforward_layer_norm, f"{prefix}mlp_norm")
    port_norm(weights, model.get_layer("final_norm"), "final_norm")


CONVERTER = Converter(
    model_type="modernbert",
    description="ModernBertModel and ModernBertForMaskedLM checkpoints",
    prefix="model.",
    # ModernBertForMaskedLM's head, beside the encoder.
    ignored=("head.*", "decoder.*"),
    convert_backbone_config=convert_backbone_config,
    build_encoder=build_encoder,
    convert_weights=convert_weights,
)


def load_hf_modernbert(
    model_dir: str | os.PathLike,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    unused: str = "warn",
) -> keras.Model:
    """A Keras model of our layers from a Hugging Face ModernBERT checkpoint.

    Reads `config.json` (the Hub's form or transformers 5's) and
    `model.safetensors` (a `ModernBertModel`, or the encoder of a
    `ModernBertForMaskedLM`; its head is not loaded) and builds what
    `ModernBertModel` computes: token embeddings and their norm, then
    `num_hidden_layers` pre-LN `EncoderBlock`s without biases (as the
    checkpoint's `attention_bias`, `mlp_bias` and `norm_bias` say), with
    GeGLU feed-forward networks, rotary positions (`global_rope_theta` in
    global layers, `local_rope_theta` in local ones) and, in local layers
    (all but every `global_attn_every_n_layers`-th from the first), a
    window of `local_attention // 2` tokens on either side; the first
    layer has no attention norm; then the final norm and sentence pooling.

    Inputs are a dict of int32 (batch, seq) tensors `input_ids` and
    `attention_mask` (1 = real token); outputs a dict:
    `last_hidden_state` (B, S, H) and `sentence_embedding` (B, H).

    Sequences are computed padded, with masks, where Hugging Face's flash
    attention path unpads them into one packed sequence: the outputs at
    real tokens are the same, but padded positions cost compute (a batch
    of very unequal lengths wastes up to `1 - mean length / max length` of
    the work; bucket by length to recover it). The sliding window is a
    mask over full (S, S) scores, not a banded kernel: memory and time
    grow as S^2 in local layers too.

    Args:
        model_dir: the checkpoint directory.
        pooling: `"mean"` (masked mean, the sentence-transformers default)
            or `"cls"` (the first token's state). Defaults to `"mean"`.
        normalize: L2-normalise the sentence embedding. Defaults to `True`.
        unused: what checkpoint tensors the model has no place for do
            (other than the masked-LM head): `"warn"` (a `UserWarning`
            listing them), `"error"` (a `ValueError`) or `"ignore"`.
            Defaults to `"warn"`.

    Returns:
        A `keras.Model`.
    """
    return CONVERTER.load(
        model_dir, pooling=pooling, normalize=normalize, unused=unused
    )
