"""Hugging Face ModernBERT checkpoints (`model_type="modernbert"`)."""

import os

import keras

from keras_encoder.convert._common import Converter
from keras_encoder.convert._common import activation
from keras_encoder.convert._common import apply_blocks
from keras_encoder.convert._common import dimensions
from keras_encoder.convert._common import encoder_blocks
from keras_encoder.convert._common import int_input
from keras_encoder.convert._common import model_name
from keras_encoder.convert.checkpoint import Weights
from keras_encoder.convert.checkpoint import port_dense
from keras_encoder.convert.checkpoint import port_norm
from keras_encoder.convert.checkpoint import port_stacked_dense


def _check_rope_scaling(config):
    """Refuse scaled rotary positions, in either config form."""
    scaling = config.get("rope_scaling")  # the Hub's form of scaled RoPE
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"Unsupported rope_scaling with rope_type={kind!r}; only "
                "unscaled (default) rotary positions"
            )
    for layer_type, params in (config.get("rope_parameters") or {}).items():
        if params is not None and (
            params.get("rope_type", "default") != "default"
        ):
            raise ValueError(
                f"Unsupported rope_type={params['rope_type']!r} for "
                f"{layer_type} layers; only 'default'"
            )


def _attention_layers(config):
    """[(rotary base, sliding window or None)] per layer, from either form
    of ModernBERT's config.json: the Hub's (`global_attn_every_n_layers`,
    `global_rope_theta`, `local_rope_theta`) or transformers 5's
    (`layer_types`, `rope_parameters`)."""
    _check_rope_scaling(config)
    count = config["num_hidden_layers"]
    every = config.get("global_attn_every_n_layers", 3)
    types = config.get("layer_types") or [
        "sliding_attention" if i % every else "full_attention"
        for i in range(count)
    ]
    thetas = {
        "full_attention": config.get("global_rope_theta", 160000.0),
        "sliding_attention": config.get("local_rope_theta", 10000.0),
    }
    for layer_type, params in (config.get("rope_parameters") or {}).items():
        if params is not None:
            thetas[layer_type] = params.get("rope_theta", thetas[layer_type])
    # ModernBERT's window: |i - j| <= local_attention // 2, which is
    # sliding_window = local_attention // 2 + 1 here (|i - j| < window).
    window = config.get("local_attention", 128) // 2 + 1
    layers = []
    for layer_type in types:
        if layer_type not in thetas:
            raise ValueError(f"Unsupported layer type {layer_type!r}")
        local = layer_type == "sliding_attention"
        layers.append((float(thetas[layer_type]), window if local else None))
    if len(layers) != count:
        raise ValueError(
            f"layer_types has {len(layers)} entries; expected "
            f"num_hidden_layers={count}"
        )
    return layers


def convert_backbone_config(config: dict) -> dict:
    """The arguments of the model's layers, from ModernBERT's config.json
    (the Hub's form or transformers 5's).

    Returns:
        A dict: `name`, `vocab_size`, `hidden_dim`, `norm_epsilon` and
        `norm_bias` (of the embeddings' and the final norm) and `blocks`,
        one dict of `EncoderBlock` arguments per layer.
    """
    hidden, heads, intermediate = dimensions(config)
    epsilon = config.get("norm_eps", 1e-5)
    use_bias = config.get("attention_bias", False)
    if config.get("mlp_bias", False) != use_bias:
        raise ValueError(
            "Unsupported: attention_bias and mlp_bias differ "
            f"({use_bias} and {config.get('mlp_bias', False)}); EncoderBlock "
            "has one use_bias"
        )
    norm_bias = bool(config.get("norm_bias", False))
    block = {
        "num_heads": heads,
        "intermediate_dim": intermediate,
        "activation": activation(config, "hidden_activation"),
        "norm_first": True,
        "layer_norm_epsilon": epsilon,
        "use_bias": use_bias,
        "norm_bias": norm_bias,
        "feedforward": "geglu",
    }
    return {
        "name": model_name(config),
        "vocab_size": config["vocab_size"],
        "hidden_dim": hidden,
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
            for i, (theta, window) in enumerate(_attention_layers(config))
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
