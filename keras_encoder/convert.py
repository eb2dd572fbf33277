"""Load encoders trained elsewhere into keras_encoder layers.

- `from_torch_encoder_layer`: one `torch.nn.TransformerEncoderLayer`'s
  state dict -> an `EncoderBlock`.
- `load_hf_bert`: a Hugging Face BERT-family checkpoint directory
  (`config.json` + `model.safetensors`) -> a functional Keras model with
  sentence-transformers pooling, exportable to builtin-ops TFLite.
- `load_hf_modernbert`: the same for ModernBERT (rotary positions, local
  and global layers, GeGLU, bias-free pre-LN).
- `load_hf`: either of the two, chosen by the checkpoint's `model_type`.

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

SUPPORTED_MODEL_TYPES = ("bert", "modernbert")
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


def _read_hf(model_dir, model_types=SUPPORTED_MODEL_TYPES):
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
    if model_type not in model_types:
        raise ValueError(
            f"Unsupported architecture: model_type={model_type!r}. "
            f"Supported: {list(model_types)} ("
            + ", ".join(_DESCRIPTIONS[t] for t in model_types)
            + ")"
        )
    activation = config.get(_ACTIVATION_KEYS[model_type], "gelu")
    if activation not in HF_ACTIVATIONS:
        raise ValueError(
            f"Unsupported {_ACTIVATION_KEYS[model_type]}={activation!r}. "
            f"Supported: {sorted(HF_ACTIVATIONS)}"
        )
    from safetensors.numpy import load_file

    weights = load_file(weights_path)
    # A checkpoint of a model with a head (BertForMaskedLM,
    # ModernBertForMaskedLM, ...) keeps the encoder under a prefix.
    prefix = {"bert": "bert.", "modernbert": "model."}[model_type]
    if any(k.startswith(prefix) for k in weights):
        weights = {
            k[len(prefix) :]: v
            for k, v in weights.items()
            if k.startswith(prefix)
        }
    return config, weights


_DESCRIPTIONS = {
    "bert": "BertModel and BERT-family checkpoints such as all-MiniLM-L6-v2",
    "modernbert": "ModernBertModel and ModernBertForMaskedLM checkpoints",
}
_ACTIVATION_KEYS = {"bert": "hidden_act", "modernbert": "hidden_activation"}


def load_hf(model_dir, **kwargs):
    """`load_hf_bert` or `load_hf_modernbert`, by the checkpoint's
    `model_type` ("bert" or "modernbert"); keyword arguments go through."""
    config, _ = _read_hf(model_dir)
    loader = {"bert": load_hf_bert, "modernbert": load_hf_modernbert}
    return loader[config["model_type"]](model_dir, **kwargs)


def _check_pooling(pooling):
    if pooling not in POOLING_MODES:
        raise _checks.invalid("pooling", f"one of {POOLING_MODES}", pooling)


def _dimensions(config):
    """(hidden_size, num_attention_heads, intermediate_size), checked."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    if hidden % heads:
        raise ValueError(
            f"hidden_size={hidden} is not divisible by "
            f"num_attention_heads={heads}"
        )
    return hidden, heads, config["intermediate_size"]


def _int_input(name):
    """A (batch, sequence) int32 model input: a signature name."""
    return keras.Input((None,), dtype="int32", name=name)


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
    _check_pooling(pooling)
    config, weights = _read_hf(model_dir, ("bert",))
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "Unsupported position_embedding_type="
            f"{config['position_embedding_type']!r}; only 'absolute'"
        )
    hidden, heads, intermediate = _dimensions(config)
    epsilon = config.get("layer_norm_eps", 1e-12)

    input_ids = _int_input("input_ids")
    attention_mask = _int_input("attention_mask")
    token_type_ids = _int_input("token_type_ids")

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


def _modernbert_layers(config):
    """[(rotary base, sliding window or None)] per layer, from either form
    of ModernBERT's config.json: the Hub's (`global_attn_every_n_layers`,
    `global_rope_theta`, `local_rope_theta`) or transformers 5's
    (`layer_types`, `rope_parameters`)."""
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
    scaling = config.get("rope_scaling")  # the Hub's form of scaled RoPE
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"Unsupported rope_scaling with rope_type={kind!r}; only "
                "unscaled (default) rotary positions"
            )
    for layer_type, params in (config.get("rope_parameters") or {}).items():
        if params is None:
            continue
        if params.get("rope_type", "default") != "default":
            raise ValueError(
                f"Unsupported rope_type={params['rope_type']!r} for "
                f"{layer_type} layers; only 'default'"
            )
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


def load_hf_modernbert(
    model_dir: str | os.PathLike,
    *,
    pooling: str = "mean",
    normalize: bool = True,
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

    Returns:
        A `keras.Model`.
    """
    _check_pooling(pooling)
    config, weights = _read_hf(model_dir, ("modernbert",))
    hidden, heads, intermediate = _dimensions(config)
    epsilon = config.get("norm_eps", 1e-5)
    use_bias = config.get("attention_bias", False)
    if config.get("mlp_bias", False) != use_bias:
        raise ValueError(
            "Unsupported: attention_bias and mlp_bias differ "
            f"({use_bias} and {config.get('mlp_bias', False)}); EncoderBlock "
            "has one use_bias"
        )
    norm_bias = bool(config.get("norm_bias", False))
    activation = HF_ACTIVATIONS[config.get("hidden_activation", "gelu")]
    layers = _modernbert_layers(config)

    def norm(name):
        return keras.layers.LayerNormalization(
            epsilon=epsilon, center=norm_bias, name=name
        )

    input_ids = _int_input("input_ids")
    attention_mask = _int_input("attention_mask")
    embeddings = keras.layers.Embedding(
        config["vocab_size"], hidden, name="token_embeddings"
    )
    embeddings_norm = norm("embeddings_norm")
    x = embeddings_norm(embeddings(input_ids))
    blocks = []
    for i, (theta, window) in enumerate(layers):
        block = EncoderBlock(
            num_heads=heads,
            intermediate_dim=intermediate,
            activation=activation,
            norm_first=True,
            layer_norm_epsilon=epsilon,
            use_bias=use_bias,
            norm_bias=norm_bias,
            feedforward="geglu",
            attention_norm=i > 0,
            rotary_max_wavelength=theta,
            sliding_window=window,
            name=f"encoder_layer_{i}",
        )
        x = block(x, mask=attention_mask)
        blocks.append(block)
    final_norm = norm("final_norm")
    x = final_norm(x)
    pooled = SentencePooling(pooling, normalize, name="pooling")(
        x, mask=attention_mask
    )
    model = keras.Model(
        {"input_ids": input_ids, "attention_mask": attention_mask},
        {"last_hidden_state": x, "sentence_embedding": pooled},
        name=_model_name(config),
    )

    def get(name, shape):
        return _array(weights, name, shape)

    def assign_norm(layer, prefix):
        layer.gamma.assign(get(f"{prefix}.weight", (hidden,)))
        if norm_bias:
            layer.beta.assign(get(f"{prefix}.bias", (hidden,)))

    def assign_dense(dense, weight, bias_name):
        dense.kernel.assign(weight.T)
        if use_bias:
            dense.bias.assign(get(bias_name, (weight.shape[0],)))

    embeddings.embeddings.assign(
        get("embeddings.tok_embeddings.weight", (config["vocab_size"], hidden))
    )
    assign_norm(embeddings_norm, "embeddings.norm")
    for i, block in enumerate(blocks):
        p = f"layers.{i}."
        attention = block.attention
        qkv = get(f"{p}attn.Wqkv.weight", (3 * hidden, hidden))
        # Wqkv rows: all heads' queries, then keys, then values.
        for dense, weight, bias in zip(
            (attention.query_dense, attention.key_dense, attention.value_dense),
            np.split(qkv, 3),
            np.split(np.arange(3 * hidden), 3),
            strict=True,
        ):
            dense.kernel.assign(weight.T)
            if use_bias:
                qkv_bias = get(f"{p}attn.Wqkv.bias", (3 * hidden,))
                dense.bias.assign(qkv_bias[bias])
        assign_dense(
            attention.output_dense,
            get(f"{p}attn.Wo.weight", (hidden, hidden)),
            f"{p}attn.Wo.bias",
        )
        # Wi rows: the GeGLU input half, then the gate half, as the block's
        # intermediate kernel splits them.
        assign_dense(
            block.intermediate_dense,
            get(f"{p}mlp.Wi.weight", (2 * intermediate, hidden)),
            f"{p}mlp.Wi.bias",
        )
        assign_dense(
            block.output_dense,
            get(f"{p}mlp.Wo.weight", (hidden, intermediate)),
            f"{p}mlp.Wo.bias",
        )
        if i > 0:
            assign_norm(block.attention_layer_norm, f"{p}attn_norm")
        assign_norm(block.feedforward_layer_norm, f"{p}mlp_norm")
    assign_norm(final_norm, "final_norm")
    return model
