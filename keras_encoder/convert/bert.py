"""Hugging Face BERT-family checkpoints (`model_type="bert"`)."""

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
from keras_encoder.positional_encoding import PositionalEncoding


def convert_backbone_config(config: dict) -> dict:
    """The arguments of the model's layers, from BERT's config.json.

    Returns:
        A dict: `name`, `vocab_size`, `hidden_dim`, `max_length`,
        `type_vocab_size`, `layer_norm_epsilon` (of the embeddings'
        LayerNorm) and `blocks`, one dict of `EncoderBlock` arguments per
        layer.
    """
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "Unsupported position_embedding_type="
            f"{config['position_embedding_type']!r}; only 'absolute'"
        )
    hidden, heads, intermediate = dimensions(config)
    epsilon = config.get("layer_norm_eps", 1e-12)
    block = {
        "num_heads": heads,
        "intermediate_dim": intermediate,
        "activation": activation(config, "hidden_act"),
        "layer_norm_epsilon": epsilon,
    }
    return {
        "name": model_name(config),
        "vocab_size": config["vocab_size"],
        "hidden_dim": hidden,
        "max_length": config["max_position_embeddings"],
        "type_vocab_size": config["type_vocab_size"],
        "layer_norm_epsilon": epsilon,
        "blocks": [dict(block) for _ in range(config["num_hidden_layers"])],
    }


def build_encoder(arguments: dict) -> tuple[dict, keras.KerasTensor]:
    """Word + learned position + token-type embeddings and their
    LayerNorm, post-LN `EncoderBlock`s: (inputs by name, last hidden
    state)."""
    hidden = arguments["hidden_dim"]
    inputs = {
        name: int_input(name)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    word = keras.layers.Embedding(
        arguments["vocab_size"], hidden, name="word_embeddings"
    )
    positions = PositionalEncoding(
        arguments["max_length"], mode="learned", name="position_embeddings"
    )
    token_types = keras.layers.Embedding(
        arguments["type_vocab_size"], hidden, name="token_type_embeddings"
    )
    embeddings_norm = keras.layers.LayerNormalization(
        epsilon=arguments["layer_norm_epsilon"], name="embeddings_layer_norm"
    )
    x = keras.layers.Add(name="embeddings_sum")(
        [
            positions(word(inputs["input_ids"])),
            token_types(inputs["token_type_ids"]),
        ]
    )
    x = embeddings_norm(x)
    return inputs, apply_blocks(
        x, inputs["attention_mask"], arguments["blocks"]
    )


def convert_weights(model: keras.Model, weights: Weights) -> None:
    """Every weight of `build_encoder`'s model, from a `BertModel`'s."""
    weights.port(
        model.get_layer("word_embeddings").embeddings,
        "embeddings.word_embeddings.weight",
    )
    weights.port(
        model.get_layer("position_embeddings").position_embeddings,
        "embeddings.position_embeddings.weight",
    )
    weights.port(
        model.get_layer("token_type_embeddings").embeddings,
        "embeddings.token_type_embeddings.weight",
    )
    port_norm(
        weights,
        model.get_layer("embeddings_layer_norm"),
        "embeddings.LayerNorm",
    )
    for i, block in enumerate(encoder_blocks(model)):
        prefix = f"encoder.layer.{i}."
        attention = block.attention
        for dense, name in (
            (attention.query_dense, "attention.self.query"),
            (attention.key_dense, "attention.self.key"),
            (attention.value_dense, "attention.self.value"),
            (attention.output_dense, "attention.output.dense"),
            (block.intermediate_dense, "intermediate.dense"),
            (block.output_dense, "output.dense"),
        ):
            port_dense(weights, dense, prefix + name)
        for norm, name in (
            (block.attention_layer_norm, "attention.output.LayerNorm"),
            (block.feedforward_layer_norm, "output.LayerNorm"),
        ):
            port_norm(weights, norm, prefix + name)


CONVERTER = Converter(
    model_type="bert",
    description=(
        "BertModel and BERT-family checkpoints such as all-MiniLM-L6-v2"
    ),
    prefix="bert.",
    # The pooler and the pre-training heads (BertForMaskedLM's and
    # BertForPreTraining's `cls.*`) are not part of the encoder; older
    # checkpoints also store the `position_ids` buffer.
    ignored=("pooler.*", "cls.*", "embeddings.position_ids"),
    convert_backbone_config=convert_backbone_config,
    build_encoder=build_encoder,
    convert_weights=convert_weights,
)


def load_hf_bert(
    model_dir: str | os.PathLike,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    unused: str = "warn",
) -> keras.Model:
    """A Keras model of our layers from a Hugging Face BERT checkpoint.

    Reads `config.json` and `model.safetensors` (with the `safetensors`
    package; torch is not needed) and builds: word + learned position +
    token-type embeddings and LayerNorm, then `num_hidden_layers` post-LN
    `EncoderBlock`s with the checkpoint's activation (exact GELU for BERT)
    and `layer_norm_eps`, then sentence pooling.

    Inputs are a dict of int32 (batch, seq) tensors `input_ids`,
    `attention_mask` (1 = real token, as in Hugging Face) and
    `token_type_ids`; these names are the SavedModel and TFLite signature
    names. Outputs are a dict: `last_hidden_state` (B, S, H) and
    `sentence_embedding` (B, H).

    The checkpoint may be a `BertModel` or hold one under `bert.` beside
    a head; the pooler and the pre-training heads (`cls.*`) are not
    loaded.

    Args:
        model_dir: the checkpoint directory.
        pooling: `"mean"` (masked mean, the sentence-transformers default)
            or `"cls"` (the [CLS] token's state). Defaults to `"mean"`.
        normalize: L2-normalise the sentence embedding, as
            sentence-transformers' `Normalize` module does. Defaults to
            `True`.
        unused: what checkpoint tensors the model has no place for do
            (other than the pooler and heads): `"warn"` (a `UserWarning`
            listing them), `"error"` (a `ValueError`) or `"ignore"`.
            Defaults to `"warn"`.

    Returns:
        A `keras.Model`.
    """
    return CONVERTER.load(
        model_dir, pooling=pooling, normalize=normalize, unused=unused
    )
