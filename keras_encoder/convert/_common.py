"""What the Hugging Face converters share.

Each model family (`bert.py`, `modernbert.py`) is a `Converter` of three
steps: `convert_backbone_config` (config.json -> the arguments of our
layers, a pure function), `build_encoder` (those arguments -> the
encoder's inputs and last hidden state, which `sentence_model` pools) and
`convert_weights` (the checkpoint's tensors -> that model).
`Converter.load` runs them; the helpers here are the pieces the families
have in common.
"""

import dataclasses
import math
import os
from collections.abc import Callable
from collections.abc import Mapping

import keras

from keras_encoder import _checks
from keras_encoder.convert.checkpoint import Weights
from keras_encoder.convert.checkpoint import config_path
from keras_encoder.convert.checkpoint import open_safetensors
from keras_encoder.convert.checkpoint import read_config
from keras_encoder.encoder_block import EncoderBlock
from keras_encoder.sentence_pooling import POOLING_MODES
from keras_encoder.sentence_pooling import SentencePooling

# Hugging Face activation names -> Keras's (exact GELU for "gelu").
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a config.json field must hold: `expected`, in words, for the
    message, and `accepts`, the test of a value."""

    expected: str
    accepts: Callable[[object], bool]


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value):
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


POSITIVE_INT = Kind("a positive integer", lambda v: _integer(v) and v > 0)
POSITIVE_NUMBER = Kind("a positive number", lambda v: _number(v) and v > 0)
BOOLEAN = Kind("true or false", lambda v: isinstance(v, bool))
ACTIVATION = Kind(
    f"one of {sorted(HF_ACTIVATIONS)} (the activations supported)",
    lambda v: isinstance(v, str) and v in HF_ACTIVATIONS,
)

# A field's default when absent: REQUIRED, or the value.
REQUIRED = object()

# The sizes that every family's config.json holds (see each family's
# `FIELDS`).
SIZE_FIELDS = {
    "vocab_size": (POSITIVE_INT, REQUIRED),
    "hidden_size": (POSITIVE_INT, REQUIRED),
    "num_hidden_layers": (POSITIVE_INT, REQUIRED),
    "num_attention_heads": (POSITIVE_INT, REQUIRED),
    "intermediate_size": (POSITIVE_INT, REQUIRED),
}


def config_error(
    source: str, name: str, expected: str, value: object
) -> ValueError:
    """A `ValueError` naming the config file, the field and the value:
    "config.json at P: field `name` must be {expected}. Received:
    name=value"."""
    return ValueError(
        f"{source}: field `{name}` must be {expected}. "
        f"Received: {name}={value!r}"
    )


def check_fields(
    config: dict,
    fields: Mapping[str, tuple[Kind, object]],
    source: str,
    prefix: str = "",
) -> dict:
    """The values of `fields` in `config`, each checked against its kind,
    defaults filled in.

    Args:
        config: the parsed config.json.
        fields: field name -> (`Kind`, default or `REQUIRED`).
        source: the file, as messages name it.
        prefix: where `config` sits in the file, before each field's
            name in messages (`"rope_parameters.full_attention."`).
            Defaults to `""` (the top level).

    Raises:
        ValueError: a required field is missing, or a field holds a value
            its kind does not accept; the message names `source`, the
            field and the value.
    """
    values = {}
    for name, (kind, default) in fields.items():
        if name not in config:
            if default is REQUIRED:
                raise ValueError(
                    f"{source}: field `{prefix}{name}` is missing; it must "
                    f"be {kind.expected}"
                )
            values[name] = default
            continue
        value = config[name]
        if not kind.accepts(value):
            raise config_error(source, prefix + name, kind.expected, value)
        values[name] = value
    return values


def check_heads(fields: dict, source: str) -> None:
    """`num_attention_heads` divides `hidden_size`, or a `ValueError`."""
    hidden, heads = fields["hidden_size"], fields["num_attention_heads"]
    if hidden % heads:
        raise config_error(
            source,
            "num_attention_heads",
            f"a divisor of hidden_size={hidden}",
            heads,
        )


def model_name(config: dict) -> str:
    """The Keras model's name: `{model_type}_{num_hidden_layers}_layers`."""
    return f"{config['model_type']}_{config['num_hidden_layers']}_layers"


def int_input(name: str) -> keras.KerasTensor:
    """A (batch, sequence) int32 model input: a signature name."""
    return keras.Input((None,), dtype="int32", name=name)


def apply_blocks(
    x: keras.KerasTensor,
    mask: keras.KerasTensor,
    blocks: list[dict],
    *,
    causal: bool = False,
) -> keras.KerasTensor:
    """`x` through one `EncoderBlock(**arguments)` per entry of `blocks`,
    named `encoder_layer_{i}`; with `causal`, each called with
    `use_causal_mask=True` (a decoder's self-attention)."""
    for i, arguments in enumerate(blocks):
        block = EncoderBlock(**arguments, name=f"encoder_layer_{i}")
        x = block(x, mask=mask, use_causal_mask=causal)
    return x


def encoder_blocks(model: keras.Model) -> list[EncoderBlock]:
    """The model's `EncoderBlock`s, first to last."""
    return [layer for layer in model.layers if isinstance(layer, EncoderBlock)]


def sentence_model(
    inputs: dict,
    states: keras.KerasTensor,
    *,
    pooling: str,
    normalize: bool,
    name: str,
) -> keras.Model:
    """The functional model from `inputs` (with an `attention_mask`) to
    `last_hidden_state` (`states`) and its `sentence_embedding`."""
    pooled = SentencePooling(pooling, normalize, name="pooling")(
        states, mask=inputs["attention_mask"]
    )
    return keras.Model(
        inputs,
        {"last_hidden_state": states, "sentence_embedding": pooled},
        name=name,
    )


@dataclasses.dataclass(frozen=True)
class Converter:
    """One Hugging Face model family, and how it becomes a Keras model.

    Attributes:
        model_type: the family's `model_type` in config.json.
        description: the checkpoints it covers, for messages.
        prefix: where a checkpoint of a model with a head keeps the
            encoder's weights (`"bert."` in `BertForMaskedLM`).
        ignored: `fnmatch` patterns of checkpoint names the family never
            needs (heads, buffers), so not reported as unused.
        convert_backbone_config: (config.json, and the file as messages
            name it) -> the layer arguments.
        build_encoder: layer arguments -> (inputs by name, last hidden
            state), which `sentence_model` pools.
        convert_weights: (model, `Weights`) -> None: ports every weight.
    """

    model_type: str
    description: str
    prefix: str
    ignored: tuple[str, ...]
    convert_backbone_config: Callable[..., dict]
    build_encoder: Callable[[dict], tuple[dict, keras.KerasTensor]]
    convert_weights: Callable[[keras.Model, Weights], None]

    def load(
        self,
        model_dir: str | os.PathLike,
        *,
        pooling: str,
        normalize: bool,
        unused: str,
    ) -> keras.Model:
        """The checkpoint in `model_dir` as a Keras model; each weight is
        read from disk once, straight into its variable."""
        _checks.choice("pooling", pooling, POOLING_MODES)
        config = read_config(model_dir, {self.model_type: self.description})
        arguments = self.convert_backbone_config(
            config, source=f"config.json at {config_path(model_dir)}"
        )
        with open_safetensors(
            model_dir, prefix=self.prefix, ignore=self.ignored, unused=unused
        ) as weights:
            inputs, states = self.build_encoder(arguments)
            model = sentence_model(
                inputs,
                states,
                pooling=pooling,
                normalize=normalize,
                name=arguments["name"],
            )
            self.convert_weights(model, weights)
        return model
