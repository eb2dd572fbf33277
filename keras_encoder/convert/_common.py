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
import os
from collections.abc import Callable

import keras

from keras_encoder import _checks
from keras_encoder.convert.checkpoint import Weights
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


def activation(config: dict, key: str) -> str:
    """The Keras name of the activation that `config[key]` names (default
    "gelu"), or a `ValueError` naming the ones supported."""
    name = config.get(key, "gelu")
    if name not in HF_ACTIVATIONS:
        raise ValueError(
            f"Unsupported {key}={name!r}. Supported: {sorted(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


def dimensions(config: dict) -> tuple[int, int, int]:
    """(hidden_size, num_attention_heads, intermediate_size), checked."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    if hidden % heads:
        raise ValueError(
            f"hidden_size={hidden} is not divisible by "
            f"num_attention_heads={heads}"
        )
    return hidden, heads, config["intermediate_size"]


def model_name(config: dict) -> str:
    """The Keras model's name: `{model_type}_{num_hidden_layers}_layers`."""
    return f"{config['model_type']}_{config['num_hidden_layers']}_layers"


def int_input(name: str) -> keras.KerasTensor:
    """A (batch, sequence) int32 model input: a signature name."""
    return keras.Input((None,), dtype="int32", name=name)


def apply_blocks(
    x: keras.KerasTensor, mask: keras.KerasTensor, blocks: list[dict]
) -> keras.KerasTensor:
    """`x` through one `EncoderBlock(**arguments)` per entry of `blocks`,
    named `encoder_layer_{i}`."""
    for i, arguments in enumerate(blocks):
        x = EncoderBlock(**arguments, name=f"encoder_layer_{i}")(x, mask=mask)
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
        convert_backbone_config: config.json -> the layer arguments.
        build_encoder: layer arguments -> (inputs by name, last hidden
            state), which `sentence_model` pools.
        convert_weights: (model, `Weights`) -> None: ports every weight.
    """

    model_type: str
    description: str
    prefix: str
    ignored: tuple[str, ...]
    convert_backbone_config: Callable[[dict], dict]
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
        arguments = self.convert_backbone_config(config)
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
