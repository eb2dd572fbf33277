"""The `>>>` examples in the package's docstrings run, on every backend."""

import doctest
import importlib

import keras
import numpy as np
import pytest

import keras_encoder

MODULES = [
    "keras_encoder.multi_head_self_attention",
    "keras_encoder.encoder_block",
    "keras_encoder.positional_encoding",
    "keras_encoder.alibi_bias",
    "keras_encoder.distribution",
    "keras_encoder.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name.endswith("distribution") and keras.backend.backend() == "torch":
        pytest.skip("keras.distribution has no torch implementation")
    module = importlib.import_module(name)
    names = {n: getattr(keras_encoder, n) for n in keras_encoder.__all__}
    result = doctest.testmod(
        module,
        extraglobs={"np": np, "keras": keras, **names},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 0
    assert result.failed == 0
