"""Model parallelism: how to shard the package's layers over devices.

`layout_map(device_mesh)` returns a `keras.distribution.LayoutMap` for
`keras.distribution.ModelParallel` that shards every `EncoderBlock` and
`MultiHeadSelfAttention` Megatron-style (Shoeybi et al., 2019) over the
mesh's model axis:

- column-parallel (output features split): the query, key and value
  projections and the feed-forward network's first dense layer (with
  their biases), so each device holds whole heads' worth of columns and
  whole slices of the hidden layer;
- row-parallel (input features split): the attention output projection
  and the feed-forward network's second dense layer, whose partial sums
  XLA reduces across devices.

Everything else (norms, output biases, embeddings, heads) is replicated.
With the JAX backend, XLA inserts the collectives; the maths is that of one
device, up to float rounding of the reduction order.
"""

import keras

# Variable paths end in "<layer>/<sublayer>/<weight>"; the sublayer names
# are fixed (see the README's Layers section), so the keys below match
# every block and attention layer whatever the model calls them (and any
# other layer's sublayer of the same name: a layout, never a change of
# the maths).
_COLUMN = r"(query|key|value|feedforward_intermediate_dense)"
_ROW = r"(attention_output|feedforward_output_dense)"


def layout_map(device_mesh, model_axis="model"):
    """A `keras.distribution.LayoutMap` sharding the attention and
    feed-forward kernels of the package's layers over `model_axis`.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh`, e.g. of shape
            (batch devices, model devices) with axis names
            `("batch", "model")`.
        model_axis: str, the mesh axis to shard weights over. Defaults to
            `"model"`.

    Returns:
        A `keras.distribution.LayoutMap`; pass it to
        `keras.distribution.ModelParallel(layout_map=...,
        batch_dim_name=...)`, and build the model inside that
        distribution's scope.

    Example:

    >>> devices = keras.distribution.list_devices()[:1]
    >>> axes = ["batch", "model"]
    >>> mesh = keras.distribution.DeviceMesh((1, 1), axes, devices)
    >>> layouts = layout_map(mesh)
    >>> tuple(layouts["block/self_attention/query/kernel"].axes)
    (None, 'model')
    >>> tuple(layouts["block/feedforward_output_dense/kernel"].axes)
    ('model', None)
    """
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            "Received an invalid value for argument `model_axis`: expected "
            f"one of the mesh's axis names {list(device_mesh.axis_names)}. "
            f"Received: model_axis={model_axis!r}"
        )
    layouts = keras.distribution.LayoutMap(device_mesh)
    layouts[rf"(.*/)?{_COLUMN}/kernel"] = (None, model_axis)
    layouts[rf"(.*/)?{_COLUMN}/bias"] = (model_axis,)
    layouts[rf"(.*/)?{_ROW}/kernel"] = (model_axis, None)
    return layouts
