"""Hugging Face BERT-family checkpoints (`model_type="bert"`)."""

import os

import keras

from keras_encoder.convert._common import ACTIVATION
from keras_encoder.convert._common import BOOLEAN
from keras_encoder.convert._common import HF_ACTIVATIONS
from keras_encoder.convert._common import POSITIVE_INT
from keras_encoder.convert._common import POSITIVE_NUMBER
from keras_encoder.convert._common import REQUIRED
from keras_encoder.convert._common import SIZE_FIELDS
from keras_encoder.convert._common import Converter
from keras_encoder.convert._common import Kind
from keras_encoder.convert._common import apply_blocks
from keras_encoder.convert._common import check_fields
from keras_encoder.convert._common import check_heads
from keras_encoder.convert._common import encoder_blocks
from keras_encoder.convert._common import int_input
from keras_encoder.convert._common import model_name
from keras_encoder.convert.checkpoint import Weights
from keras_encoder.convert.checkpoint import port_dense
from keras_encoder.convert.checkpoint import port_norm
from keras_encoder.positional_encoding import PositionalEncoding


def _only(value, expected):
    """A `Kind` that accepts `value` alone (what the model supports)."""
    return Kind(expected, lambda v: v == value and type(v) is type(value))


# config.json fields that change what `BertModel` computes: field ->
# (kind, default or REQUIRED). The others (dropouts, initializer_range,
# the pad/bos/eos ids, tie_word_embeddings, use_cache,
# chunk_size_feed_forward, which only splits the same computation,
# classifier_dropout) do not change its outputs in eval mode.
FIELDS = {
    **SIZE_FIELDS,
    "max_position_embeddings": (POSITIVE_INT, REQUIRED),
    "type_vocab_size": (POSITIVE_INT, REQUIRED),
    "hidden_act": (ACTIVATION, "gelu"),
    "layer_norm_eps": (POSITIVE_NUMBER, 1e-12),
    # A decoder: causal self-attention, as transformers applies it.
    "is_decoder": (BOOLEAN, False),
    "add_cross_attention": (
        _only(
            False,
            "false: cross-attention to an encoder's states is not "
            "supported (the model has no input for them)",
        ),
        False,
    ),
    "position_embedding_type": (
        _only(
            "absolute",
            "'absolute': relative position embeddings are not supported",
        ),
        "absolute",
    ),
    "pruned_heads": (
        Kind(
            "empty: pruned attention heads are not supported",
            lambda v: v in ({}, None),
        ),
        {},
    ),
}


def convert_backbone_config(
    config: dict, *, source: str = "config.json"
) -> dict:
    """The arguments of the model's layers, from BERT's config.json.

    Args:
        config: the parsed config.json.
        source: the file, as messages name it. Defaults to
            `"config.json"`.

    Returns:
        A dict: `name`, `vocab_size`, `hidden_dim`, `max_length`,
        `type_vocab_size`, `layer_norm_epsilon` (of the embeddings'
        LayerNorm), `causal` (`is_decoder`: causal self-attention) and
        `blocks`, one dict of `EncoderBlock` arguments per layer.

    Raises:
        ValueError: a field of `FIELDS` is missing or holds a value that
            is malformed or not supported; the message names `source`,
            the field and the value.
    """
    fields = check_fields(config, FIELDS, source)
    check_heads(fields, source)
    epsilon = fields["layer_norm_eps"]
    block = {
        "num_heads": fields["num_attention_heads"],
        "intermediate_dim": fields["intermediate_size"],
        "activation": HF_ACTIVATIONS[fields["hidden_act"]],
        "layer_norm_epsilon": epsilon,
    }
    return {
        "name": model_name(config),
        "vocab_size": fields["vocab_size"],
        "hidden_dim": fields["hidden_size"],
        "max_length": fields["max_position_embeddings"],
        "type_vocab_size": fields["type_vocab_size"],
        "layer_norm_epsilon": epsilon,
        "causal": fields["is_decoder"],
        "blocks": [dict(block) for _ in range(fields["num_hidden_layers"])],
    }


def build_encoder(arguments: dict) -> tuple[dict, keras.KerasTensor]:
    """Word + learned position + token-type embeddings and their
    LayerNorm, post-LN `EncoderBlock`s (causal with `causal`): (inputs by
    name, last hidden state)."""
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
        x,
        inputs["attention_mask"],
        arguments["blocks"],
        causal=arguments["causal"],
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
    and `layer_norm_eps`, then sentence pooling. A decoder's checkpoint
    (`is_decoder: true`, as `BertLMHeadModel`'s) gets causal
    self-attention, as transformers gives it. Fields that would change the
    maths in ways these layers do not support (`add_cross_attention`,
    relative `position_embedding_type`, `pruned_heads`, another
    `hidden_act`) are refused, as is a malformed config.json: a
    `ValueError` names the file, the field and the value.

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
