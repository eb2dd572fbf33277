"""Hugging Face checkpoints under hostile input: config fields that change
the maths are honoured (`is_decoder`) or refused, and a malformed
config.json or model.safetensors is a `ValueError` naming the file, the
field and the value, never a raw KeyError, TypeError or
ZeroDivisionError."""

import json
import pathlib
import re

import keras
import numpy as np
import pytest

from keras_encoder import convert
from tests import numpy_reference as ref
from tests.helpers import checkpoint_copy

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_BERT = FIXTURES / "tiny_bert"
TINY_MODERNBERT = FIXTURES / "tiny_modernbert"


def _config(checkpoint):
    return json.loads((checkpoint / "config.json").read_text())


def _transformers5_modernbert_config():
    """ModernBERT's config.json as transformers 5 saves it."""
    outputs = np.load(FIXTURES / "tiny_modernbert_outputs.npz")
    return json.loads(str(outputs["transformers_config"]))


def _numpy_bert(inputs, causal):
    """BertModel's last hidden state in float64, from tiny_bert's
    safetensors with tests/numpy_reference.py: `causal` is the decoder's
    self-attention (query i sees keys j <= i). Real tokens only."""
    from safetensors.numpy import load_file

    weights = load_file(TINY_BERT / "model.safetensors")
    w = {k: v.astype("float64") for k, v in weights.items()}
    config = _config(TINY_BERT)
    epsilon = config["layer_norm_eps"]
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][: ids.shape[1]]
        + w["embeddings.token_type_embeddings.weight"][inputs["token_type_ids"]]
    )
    x = ref.layer_norm(
        x,
        w["embeddings.LayerNorm.weight"],
        w["embeddings.LayerNorm.bias"],
        epsilon,
    )
    heads = config["num_attention_heads"]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        block = []
        for name in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            block += [w[f"{p}{name}.weight"].T, w[f"{p}{name}.bias"]]
        for name, dense in (
            ("attention.output.LayerNorm", False),
            ("intermediate.dense", True),
            ("output.dense", True),
            ("output.LayerNorm", False),
        ):
            weight = w[f"{p}{name}.weight"]
            block += [weight.T if dense else weight, w[f"{p}{name}.bias"]]
        x = ref.encoder_block(
            x,
            block,
            num_heads=heads,
            key_dim=config["hidden_size"] // heads,
            activation="gelu",
            epsilon=epsilon,
            mask=mask.astype(bool),
            causal=causal,
        )
    return x


def test_a_decoder_bert_is_causal_as_transformers(tmp_path):
    """`is_decoder: true` (BertLMHeadModel's checkpoints): transformers
    masks attention causally; the loaded model does too. The float64
    reference is first checked against transformers' own outputs of the
    bidirectional model (the committed fixture), then, made causal,
    against the decoder."""
    fixture = dict(np.load(FIXTURES / "tiny_bert_outputs.npz"))
    inputs = {
        k: fixture[k] for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    real = fixture["attention_mask"].astype(bool)
    bidirectional = _numpy_bert(inputs, causal=False)
    np.testing.assert_allclose(
        bidirectional[real], fixture["last_hidden_state"][real], atol=1e-5
    )
    expected = _numpy_bert(inputs, causal=True)
    # They differ by 0.056 at real tokens: 5,000 times the tolerance.
    assert np.abs(expected - bidirectional)[real].max() > 1e-2
    checkpoint = checkpoint_copy(
        TINY_BERT, tmp_path, config=lambda c: {**c, "is_decoder": True}
    )
    model = convert.load_hf_bert(checkpoint)
    states = keras.ops.convert_to_numpy(model(inputs)["last_hidden_state"])
    np.testing.assert_allclose(states[real], expected[real], atol=1e-5)


def _write_config(tmp_path, config):
    """A checkpoint directory holding only `config.json` (config errors
    come before any weight is read)."""
    path = tmp_path / "checkpoint"
    path.mkdir()
    text = config if isinstance(config, str | bytes) else json.dumps(config)
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path / "config.json", mode) as f:
        f.write(text)
    return path


def _without(config, field):
    return {k: v for k, v in config.items() if k != field}


def _field_error(field, expected, received):
    """The message of a bad field, as a pattern."""
    return re.escape(
        f"field `{field}` must be {expected}. Received: {field}={received}"
    )


BERT = _config(TINY_BERT)
MODERNBERT = _config(TINY_MODERNBERT)
TRANSFORMERS5 = _transformers5_modernbert_config()
FLAT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize(
    "config,message",
    [
        (
            _without(BERT, "hidden_size"),
            re.escape(
                "field `hidden_size` is missing; it must be a positive integer"
            ),
        ),
        (
            _without(BERT, "intermediate_size"),
            re.escape("field `intermediate_size` is missing"),
        ),
        (
            {**BERT, "num_attention_heads": 0},
            _field_error("num_attention_heads", "a positive integer", "0"),
        ),
        (
            {**BERT, "hidden_size": "32"},
            _field_error("hidden_size", "a positive integer", "'32'"),
        ),
        (
            {**BERT, "num_hidden_layers": 2.0},
            _field_error("num_hidden_layers", "a positive integer", "2.0"),
        ),
        (
            {**BERT, "num_attention_heads": 5},
            _field_error(
                "num_attention_heads", "a divisor of hidden_size=32", "5"
            ),
        ),
        (
            {**BERT, "layer_norm_eps": "1e-12"},
            _field_error("layer_norm_eps", "a positive number", "'1e-12'"),
        ),
        (
            {**BERT, "is_decoder": "yes"},
            _field_error("is_decoder", "true or false", "'yes'"),
        ),
        (
            {**BERT, "hidden_act": ["gelu"]},
            _field_error(
                "hidden_act",
                "one of ['gelu', 'relu', 'silu', 'swish'] (the activations "
                "supported)",
                "['gelu']",
            ),
        ),
    ],
    ids=[
        "no_hidden_size",
        "no_intermediate_size",
        "zero_heads",
        "string_hidden_size",
        "float_layers",
        "heads_not_dividing",
        "string_eps",
        "string_is_decoder",
        "list_hidden_act",
    ],
)
def test_a_malformed_bert_config_names_file_field_and_value(
    tmp_path, config, message
):
    checkpoint = _write_config(tmp_path, config)
    source = re.escape(f"config.json at {checkpoint / 'config.json'}: ")
    with pytest.raises(ValueError, match=source + message):
        convert.load_hf_bert(checkpoint)


@pytest.mark.parametrize(
    "field,value,expected",
    [
        (
            "add_cross_attention",
            True,
            "false: cross-attention to an encoder's states is not supported "
            "(the model has no input for them)",
        ),
        (
            "position_embedding_type",
            "relative_key",
            "'absolute': relative position embeddings are not supported",
        ),
        (
            "position_embedding_type",
            "relative_key_query",
            "'absolute': relative position embeddings are not supported",
        ),
        (
            "pruned_heads",
            {"0": [1]},
            "empty: pruned attention heads are not supported",
        ),
        (
            "hidden_act",
            "gelu_new",
            "one of ['gelu', 'relu', 'silu', 'swish'] (the activations "
            "supported)",
        ),
    ],
    ids=[
        "add_cross_attention",
        "relative_key",
        "relative_key_query",
        "pruned_heads",
        "gelu_new",
    ],
)
def test_bert_fields_that_change_the_maths_are_refused(
    tmp_path, field, value, expected
):
    """Fields that would make transformers compute something else than
    this model, refused up front (not silently ignored): the real tiny
    checkpoint, so the only thing wrong is the field."""
    checkpoint = checkpoint_copy(
        TINY_BERT, tmp_path, config=lambda c: {**c, field: value}
    )
    with pytest.raises(
        ValueError, match=_field_error(field, expected, repr(value))
    ):
        convert.load_hf_bert(checkpoint)


@pytest.mark.parametrize(
    "config,message",
    [
        (
            {**MODERNBERT, "global_attn_every_n_layers": 0},
            _field_error(
                "global_attn_every_n_layers", "a positive integer", "0"
            ),
        ),
        (
            {**MODERNBERT, "local_attention": None},
            _field_error("local_attention", "a positive integer", "None"),
        ),
        (
            {**MODERNBERT, "norm_bias": "false"},
            _field_error("norm_bias", "true or false", "'false'"),
        ),
        (
            {**MODERNBERT, "local_rope_theta": -1.0},
            _field_error("local_rope_theta", "a positive number", "-1.0"),
        ),
        (
            {**MODERNBERT, "rope_scaling": "linear"},
            _field_error(
                "rope_scaling",
                "null or of rope_type 'default': scaled rotary positions "
                "are not supported",
                "'linear'",
            ),
        ),
        (
            {**TRANSFORMERS5, "rope_parameters": FLAT_ROPE},
            _field_error(
                "rope_parameters",
                "null or an object mapping 'full_attention' and "
                "'sliding_attention' to objects (of rope_type and "
                "rope_theta), transformers 5's form",
                repr(FLAT_ROPE),
            ),
        ),
        (
            {
                **TRANSFORMERS5,
                "rope_parameters": {
                    "full_attention": {"rope_theta": "160000"},
                    "sliding_attention": None,
                },
            },
            _field_error(
                "rope_parameters.full_attention.rope_theta",
                "a positive number",
                "'160000'",
            ),
        ),
        (
            {**TRANSFORMERS5, "num_hidden_layers": 4.0},
            _field_error("num_hidden_layers", "a positive integer", "4.0"),
        ),
        (
            {**TRANSFORMERS5, "layer_types": ["full_attention"] * 3},
            _field_error(
                "layer_types",
                "a list of num_hidden_layers=4 entries",
                repr(["full_attention"] * 3),
            ),
        ),
        (
            {**TRANSFORMERS5, "layer_types": ["global"] * 4},
            _field_error(
                "layer_types",
                "null or a list of 'full_attention' and 'sliding_attention'",
                repr(["global"] * 4),
            ),
        ),
    ],
    ids=[
        "zero_global_every",
        "null_local_attention",
        "string_norm_bias",
        "negative_theta",
        "string_rope_scaling",
        "flat_rope_parameters",
        "string_rope_theta",
        "float_layers_with_layer_types",
        "short_layer_types",
        "unknown_layer_type",
    ],
)
def test_a_malformed_modernbert_config_names_file_field_and_value(
    tmp_path, config, message
):
    checkpoint = _write_config(tmp_path, config)
    source = re.escape(f"config.json at {checkpoint / 'config.json'}: ")
    with pytest.raises(ValueError, match=source + message):
        convert.load_hf(checkpoint)


@pytest.mark.parametrize(
    "text,message",
    [
        ("[1, 2]", r"expected a JSON object of fields .* a JSON array"),
        ('{"model_type": "bert",', r"not valid JSON \(Expecting"),
        (b"\xff\xfe{}", r"not valid JSON \('utf-8' codec can't decode"),
        (
            '{"model_type": ["bert"]}',
            r"Unsupported architecture: model_type=\['bert'\]",
        ),
    ],
    ids=[
        "json_list",
        "bad_json",
        "not_utf8",
        "list_model_type",
    ],
)
def test_a_malformed_config_file_is_named(tmp_path, text, message):
    checkpoint = _write_config(tmp_path, text)
    source = re.escape(f"config.json at {checkpoint / 'config.json'}: ")
    with pytest.raises(ValueError, match=source + message):
        convert.load_hf(checkpoint)


def test_a_truncated_safetensors_file_is_named(tmp_path):
    checkpoint = checkpoint_copy(TINY_BERT, tmp_path)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(
        ValueError,
        match=re.escape(f"model.safetensors at {weights}: not a readable ")
        + r"safetensors file \(.*\); it may be truncated or damaged",
    ):
        convert.load_hf(checkpoint)
