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

A weight that its layout cannot split evenly (a width of 16 on 3 devices,
a same-named foreign layer such as a `Dense(1, name="value")` head, a
Keras `MultiHeadAttention` whose head count the model axis does not
divide) is left replicated, with a warning naming it: JAX cannot shard it
unevenly, and a replicated weight gives the same maths.
"""

import inspect
import math
import warnings

import keras

# Variable paths end in "<layer>/<sublayer>/<weight>"; the sublayer names
# are fixed (see the README's Layers section), so the keys below match
# every block and attention layer whatever the model calls them (and any
# other layer's sublayer of the same name: a layout where its shape allows
# one, never a change of the maths).
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
        distribution's scope. When Keras asks it for the layout of a
        weight being created, it checks the weight's shape: a weight whose
        sharded dimension the mesh axis does not divide (or whose rank is
        below the layout's) is left replicated, with a `UserWarning`
        naming its path, shape, dimension and the mesh axis and its size;
        its `replicated` attribute, a dict, maps each such weight's path
        to that message. A query by path alone (`layouts[path]`, as
        below) has no shape to check and returns the layout as mapped.

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
    layouts = _CheckedLayoutMap(device_mesh)
    layouts[rf"(.*/)?{_COLUMN}/kernel"] = (None, model_axis)
    layouts[rf"(.*/)?{_COLUMN}/bias"] = (model_axis,)
    layouts[rf"(.*/)?{_ROW}/kernel"] = (model_axis, None)
    return layouts


class _CheckedLayoutMap(keras.distribution.LayoutMap):
    """A `LayoutMap` that leaves replicated the weights it cannot split.

    `keras.distribution.ModelParallel.get_variable_layout(variable)` asks
    the map for `variable.path` alone, and JAX then refuses a dimension
    the mesh axis does not divide (`IndivisibleError`, naming neither the
    layer nor the weight). So `__getitem__` looks for the variable in the
    Keras frames that called it (the variable is created, with its shape
    set, before its layout is asked for) and answers `None`, replicated,
    where the layout does not fit.
    """

    def __init__(self, device_mesh):
        super().__init__(device_mesh)
        self.replicated = {}

    def __getitem__(self, key):
        layout = super().__getitem__(key)
        if layout is None:
            return None
        variable = _variable_asked_for(key)
        if variable is None:
            return layout
        reason = _unshardable(layout.axes, variable.shape, self.device_mesh)
        if reason is None:
            return layout
        message = (
            f"layout_map leaves weight '{key}' of shape "
            f"{tuple(variable.shape)} replicated: {reason}. The maths is "
            "unchanged; only this weight's memory is not split."
        )
        self.replicated[key] = message
        # Attributed to this module: the caller is Keras's variable code.
        warnings.warn(message, stacklevel=1)
        return None


# ModelParallel.get_variable_layout and the backend variable's
# _initialize_layout are the one or two Keras frames above __getitem__.
_FRAMES_SEARCHED = 4


def _variable_asked_for(path):
    """The `keras.Variable` of this path whose layout Keras is asking for.

    Searches the calling frames of Keras's own modules only: a user's query
    `layouts[variable.path]` gets the layout as mapped. `None` when no
    such variable is found.
    """
    frame = inspect.currentframe().f_back.f_back
    try:
        for _ in range(_FRAMES_SEARCHED):
            if frame is None:
                return None
            if frame.f_globals.get("__name__", "").startswith("keras."):
                for value in frame.f_locals.values():
                    if isinstance(value, keras.Variable) and (
                        value.path == path and value.shape is not None
                    ):
                        return value
            frame = frame.f_back
        return None
    finally:
        del frame


def _unshardable(axes, shape, device_mesh):
    """Why `axes` cannot lay out a weight of `shape` on `device_mesh`, or
    `None` when it can: every sharded dimension must be a multiple of the
    size of its mesh axis (or axes)."""
    if len(axes) > len(shape):
        return (
            f"its layout {tuple(axes)} has {len(axes)} axes, but the weight "
            f"has rank {len(shape)}"
        )
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape, strict=True))
    for dim, (axis, length) in enumerate(zip(axes, shape, strict=False)):
        if axis is None:
            continue
        names = (axis,) if isinstance(axis, str) else tuple(axis)
        split = math.prod(sizes[name] for name in names)
        if length % split:
            where = (
                f"mesh axis '{axis}'"
                if isinstance(axis, str)
                else f"mesh axes {names}"
            )
            return (
                f"its layout {tuple(axes)} splits dimension {dim} (size "
                f"{length}) over {where} of size {split}, which does not "
                "divide it"
            )
    return None
