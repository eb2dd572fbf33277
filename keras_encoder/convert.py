"""Load encoders trained elsewhere into keras_encoder layers.

- `from_torch_encoder_layer`: one `torch.nn.TransformerEncoderLayer`'s
  state dict -> an `EncoderBlock`.
- `load_hf_bert`: a Hugging Face BERT-family checkpoint directory
  (`config.json` + `model.safetensors`) -> a functional Keras model with
  sentence-transformers pooling, exportable to builtin-ops TFLite.

Neither needs torch: weights are NumPy arrays (state dicts converted with
`{k: v.numpy() for k, v in module.state_dict().items()}`) or read from
safetensors files.
"""

import json
import os

import keras
import numpy as np

from keras_encoder import _checks
from keras_encoder.encoder_block import EncoderBlock
from keras_encoder.positional_encoding import PositionalEncoding
from keras_encoder.sentence_pooling import POOLING_MODES
from keras_encoder.sentence_pooling import SentencePooling

SUPPORTED_MODEL_TYPES = ("bert",)
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def _array(weights, name, shape=None):
    if name not in weights:
        raise ValueError(f"Missing weight {name!r} in the checkpoint")
    value = np.asarray(weights[name], dtype="float32")
    if shape is not None and value.shape != tuple(shape):
        raise ValueError(
            f"Weight {name!r} has shape {value.shape}; expected "
            f"{tuple(shape)} for this configuration"
        )
    return value


def _set_block_weights(block, q, k, v, o, ffn_in, ffn_out, norm1, norm2):
    """Assign (kernel, bias) pairs in torch layout (out, in) to a block."""
    attention = block.attention
    pairs = [
        (attention.query_dense, q),
        (attention.key_dense, k),
        (attention.value_dense, v),
        (attention.output_dense, o),
        (block.intermediate_dense, ffn_in),
        (block.output_dense, ffn_out),
    ]
    for dense, (weight, bias) in pairs:
        dense.kernel.assign(weight.T)
        dense.bias.assign(bias)
    for norm, (gamma, beta) in (
        (block.attention_layer_norm, norm1),
        (block.feedforward_layer_norm, norm2),
    ):
        norm.gamma.assign(gamma)
        norm.beta.assign(beta)


def from_torch_encoder_layer(
    state_dict: dict,
    num_heads: int,
    *,
    norm_first: bool = False,
    activation: str = "relu",
    layer_norm_epsilon: float = 1e-5,
) -> EncoderBlock:
    """An `EncoderBlock` holding a torch `nn.TransformerEncoderLayer`'s weights.

    The block computes what torch computes in eval mode with
    `batch_first=True` (outputs at real positions agree within 1e-5), for
    post-LN and pre-LN (`norm_first`, as in torch) and any activation both
    support (`"relu"`, `"gelu"`: torch's default GELU is the exact one).

    Masks are inverted between the two: torch's `src_key_padding_mask` is
    True at *padded* positions; this package's `mask` is True at *real*
    tokens. Pass `mask=~src_key_padding_mask`. At padded positions the
    outputs differ (torch lets padded queries attend; here they attend to
    nothing), which never affects real positions.

    Args:
        state_dict: maps the torch parameter names (`self_attn.in_proj_weight`
            with q, k and v stacked by rows, `self_attn.in_proj_bias`,
            `self_attn.out_proj.weight`/`.bias`, `linear1.*`, `linear2.*`,
            `norm1.*`, `norm2.*`) to arrays.
        num_heads: the torch layer's `nhead`.
        norm_first: the torch layer's `norm_first`. Defaults to `False`.
        activation: the torch layer's activation, as a Keras name. Defaults
            to `"relu"` (torch's default).
        layer_norm_epsilon: the torch layer's `layer_norm_eps`. Defaults to
            `1e-5` (torch's default).

    Returns:
        A built `EncoderBlock`.
    """
    in_proj = _array(state_dict, "self_attn.in_proj_weight")
    if in_proj.ndim != 2 or in_proj.shape[0] != 3 * in_proj.shape[1]:
        raise ValueError(
            "self_attn.in_proj_weight must stack q, k and v: shape "
            f"(3 * width, width). Received: {in_proj.shape}"
        )
    width = in_proj.shape[1]
    in_bias = _array(state_dict, "self_attn.in_proj_bias", (3 * width,))
    intermediate = _array(state_dict, "linear1.weight").shape[0]
    block = EncoderBlock(
        num_heads=num_heads,
        intermediate_dim=intermediate,
        activation=activation,
        norm_first=norm_first,
        layer_norm_epsilon=layer_norm_epsilon,
    )
    block.build((None, None, width))

    def pair(prefix, out_dim, in_dim):
        return (
            _array(state_dict, f"{prefix}.weight", (out_dim, in_dim)),
            _array(state_dict, f"{prefix}.bias", (out_dim,)),
        )

    def norm(prefix):
        return (
            _array(state_dict, f"{prefix}.weight", (width,)),
            _array(state_dict, f"{prefix}.bias", (width,)),
        )

    q, k, v = np.split(in_proj, 3)
    bq, bk, bv = np.split(in_bias, 3)
    _set_block_weights(
        block,
        (q, bq),
        (k, bk),
        (v, bv),
        pair("self_attn.out_proj", width, width),
        pair("linear1", intermediate, width),
        pair("linear2", width, intermediate),
        norm("norm1"),
        norm("norm2"),
    )
    return block


def _read_hf(model_dir):
    config_path = os.path.join(model_dir, "config.json")
    weights_path = os.path.join(model_dir, "model.safetensors")
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: a Hugging Face checkpoint directory needs "
                "config.json and model.safetensors"
            )
    with open(config_path) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Unsupported architecture: model_type={model_type!r}. "
            f"Supported: {list(SUPPORTED_MODEL_TYPES)} (BertModel and "
            "BERT-family checkpoints such as all-MiniLM-L6-v2)"
        )
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "Unsupported position_embedding_type="
            f"{config['position_embedding_type']!r}; only 'absolute'"
        )
    activation = config.get("hidden_act", "gelu")
    if activation not in HF_ACTIVATIONS:
        raise ValueError(
            f"Unsupported hidden_act={activation!r}. Supported: "
            f"{sorted(HF_ACTIVATIONS)}"
        )
    from safetensors.numpy import load_file

    weights = load_file(weights_path)
    prefix = "bert."
    if any(k.startswith(prefix) for k in weights):
        weights = {
            k[len(prefix) :]: v
            for k, v in weights.items()
            if k.startswith(prefix)
        }
    return config, weights


def _model_name(config):
    return f"{config['model_type']}_{config['num_hidden_layers']}_layers"


def load_hf_bert(
    model_dir: str | os.PathLike,
    *,
    pooling: str = "mean",
    normalize: bool = True,
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

    Args:
        model_dir: the checkpoint directory.
        pooling: `"mean"` (masked mean, the sentence-transformers default)
            or `"cls"` (the [CLS] token's state). Defaults to `"mean"`.
        normalize: L2-normalise the sentence embedding, as
            sentence-transformers' `Normalize` module does. Defaults to
            `True`.

    Returns:
        A `keras.Model`.
    """
    if pooling not in POOLING_MODES:
        raise _checks.invalid("pooling", f"one of {POOLING_MODES}", pooling)
    config, weights = _read_hf(model_dir)
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    intermediate = config["intermediate_size"]
    epsilon = config.get("layer_norm_eps", 1e-12)
    if hidden % heads:
        raise ValueError(
            f"hidden_size={hidden} is not divisible by "
            f"num_attention_heads={heads}"
        )

    def int_input(name):
        return keras.Input((None,), dtype="int32", name=name)

    input_ids = int_input("input_ids")
    attention_mask = int_input("attention_mask")
    token_type_ids = int_input("token_type_ids")

    word = keras.layers.Embedding(
        config["vocab_size"], hidden, name="word_embeddings"
    )
    positions = PositionalEncoding(
        config["max_position_embeddings"],
        mode="learned",
        name="position_embeddings",
    )
    token_types = keras.layers.Embedding(
        config["type_vocab_size"], hidden, name="token_type_embeddings"
    )
    embeddings_norm = keras.layers.LayerNormalization(
        epsilon=epsilon, name="embeddings_layer_norm"
    )
    x = keras.layers.Add(name="embeddings_sum")(
        [positions(word(input_ids)), token_types(token_type_ids)]
    )
    x = embeddings_norm(x)

    blocks = []
    for i in range(config["num_hidden_layers"]):
        block = EncoderBlock(
            num_heads=heads,
            intermediate_dim=intermediate,
            activation=HF_ACTIVATIONS[config.get("hidden_act", "gelu")],
            layer_norm_epsilon=epsilon,
            name=f"encoder_layer_{i}",
        )
        x = block(x, mask=attention_mask)
        blocks.append(block)
    pooled = SentencePooling(pooling, normalize, name="pooling")(
        x, mask=attention_mask
    )
    model = keras.Model(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        },
        {"last_hidden_state": x, "sentence_embedding": pooled},
        name=_model_name(config),
    )

    def get(name, shape):
        return _array(weights, name, shape)

    word.embeddings.assign(
        get("embeddings.word_embeddings.weight", (config["vocab_size"], hidden))
    )
    positions.position_embeddings.assign(
        get(
            "embeddings.position_embeddings.weight",
            (config["max_position_embeddings"], hidden),
        )
    )
    token_types.embeddings.assign(
        get(
            "embeddings.token_type_embeddings.weight",
            (config["type_vocab_size"], hidden),
        )
    )
    embeddings_norm.gamma.assign(get("embeddings.LayerNorm.weight", (hidden,)))
    embeddings_norm.beta.assign(get("embeddings.LayerNorm.bias", (hidden,)))
    for i, block in enumerate(blocks):
        p = f"encoder.layer.{i}."

        def pair(name, out_dim, in_dim, p=p):
            return (
                get(f"{p}{name}.weight", (out_dim, in_dim)),
                get(f"{p}{name}.bias", (out_dim,)),
            )

        def norm(name, p=p):
            return (
                get(f"{p}{name}.weight", (hidden,)),
                get(f"{p}{name}.bias", (hidden,)),
            )

        _set_block_weights(
            block,
            pair("attention.self.query", hidden, hidden),
            pair("attention.self.key", hidden, hidden),
            pair("attention.self.value", hidden, hidden),
            pair("attention.output.dense", hidden, hidden),
            pair("intermediate.dense", intermediate, hidden),
            pair("output.dense", hidden, intermediate),
            norm("attention.output.LayerNorm"),
            norm("output.LayerNorm"),
        )
    return model
