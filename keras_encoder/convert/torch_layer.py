"""One `torch.nn.TransformerEncoderLayer` as an `EncoderBlock`."""

from collections.abc import Mapping

from keras_encoder.convert.checkpoint import from_arrays
from keras_encoder.convert.checkpoint import port_dense
from keras_encoder.convert.checkpoint import port_norm
from keras_encoder.convert.checkpoint import port_stacked_dense
from keras_encoder.encoder_block import EncoderBlock


def from_torch_encoder_layer(
    state_dict: Mapping,
    num_heads: int,
    *,
    norm_first: bool = False,
    activation: str = "relu",
    layer_norm_epsilon: float = 1e-5,
    unused: str = "warn",
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
        unused: what entries of `state_dict` the block has no place for
            do: `"warn"` (a `UserWarning` listing them), `"error"` (a
            `ValueError`) or `"ignore"`. Defaults to `"warn"`.

    Returns:
        A built `EncoderBlock`.
    """
    with from_arrays(state_dict, unused=unused) as weights:
        in_proj = weights.shape("self_attn.in_proj_weight")
        if len(in_proj) != 2 or in_proj[0] != 3 * in_proj[1]:
            raise ValueError(
                "self_attn.in_proj_weight must stack q, k and v: shape "
                f"(3 * width, width). Received: {in_proj}"
            )
        block = EncoderBlock(
            num_heads=num_heads,
            intermediate_dim=weights.shape("linear1.weight")[0],
            activation=activation,
            norm_first=norm_first,
            layer_norm_epsilon=layer_norm_epsilon,
        )
        block.build((None, None, in_proj[1]))
        attention = block.attention
        port_stacked_dense(
            weights,
            [attention.query_dense, attention.key_dense, attention.value_dense],
            "self_attn.in_proj_weight",
            "self_attn.in_proj_bias",
        )
        for dense, name in (
            (attention.output_dense, "self_attn.out_proj"),
            (block.intermediate_dense, "linear1"),
            (block.output_dense, "linear2"),
        ):
            port_dense(weights, dense, name)
        port_norm(weights, block.attention_layer_norm, "norm1")
        port_norm(weights, block.feedforward_layer_norm, "norm2")
    return block
