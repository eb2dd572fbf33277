"""`load_hf`: any supported Hugging Face checkpoint, by its `model_type`."""

import os

import keras

from keras_encoder.convert import bert
from keras_encoder.convert import modernbert
from keras_encoder.convert.checkpoint import read_config

# Each family's converter (its model_type and description) and loader.
_FAMILIES = (
    (bert.CONVERTER, bert.load_hf_bert),
    (modernbert.CONVERTER, modernbert.load_hf_modernbert),
)
_LOADERS = {converter.model_type: loader for converter, loader in _FAMILIES}
_DESCRIPTIONS = {c.model_type: c.description for c, _ in _FAMILIES}
SUPPORTED_MODEL_TYPES = tuple(_LOADERS)


def load_hf(model_dir: str | os.PathLike, **kwargs) -> keras.Model:
    """`load_hf_bert` or `load_hf_modernbert`, by the checkpoint's
    `model_type` ("bert" or "modernbert"); keyword arguments go through.

    Only `config.json` is read here; the loader reads the weights.
    """
    config = read_config(model_dir, _DESCRIPTIONS)
    return _LOADERS[config["model_type"]](model_dir, **kwargs)
