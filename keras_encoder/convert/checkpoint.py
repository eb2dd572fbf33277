"""Reading checkpoints: what every converter shares.

`read_config` reads a Hugging Face checkpoint's `config.json`.
`open_safetensors` opens its `model.safetensors` lazily, and `Weights`
serves tensors by name, each read from disk only when a converter asks
for it (the checkpoint is never held twice), with its shape checked; at
the end it reports the tensors nobody asked for. `port_dense`,
`port_norm` and `port_stacked_dense` copy torch-layout weights into Keras
layers.
"""

import contextlib
import fnmatch
import json
import os
import warnings
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping

import keras
import numpy as np

from keras_encoder import _checks

UNUSED_CHOICES = ("warn", "error", "ignore")


def _checkpoint_file(model_dir, name):
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: a Hugging Face checkpoint directory needs "
            "config.json and model.safetensors"
        )
    return path


def config_path(model_dir: str | os.PathLike) -> str:
    """The path of the checkpoint's `config.json`.

    Raises:
        FileNotFoundError: the directory has no `config.json`.
    """
    return _checkpoint_file(model_dir, "config.json")


def read_config(
    model_dir: str | os.PathLike, model_types: Mapping[str, str]
) -> dict:
    """The checkpoint's `config.json`, as a dict.

    Only the file and its `model_type` are checked here; each family's
    `convert_backbone_config` checks the fields it reads.

    Args:
        model_dir: the checkpoint directory.
        model_types: the `model_type`s the caller supports, each with a
            description of the checkpoints it covers (for the error).

    Returns:
        The parsed `config.json`.

    Raises:
        FileNotFoundError: the directory has no `config.json`.
        ValueError: the file is not UTF-8 JSON, not a JSON object, or its
            `model_type` is not one of `model_types`; the message names
            the file.
    """
    path = config_path(model_dir)
    source = f"config.json at {path}"
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{source}: expected a JSON object of fields (such as "
            '{"model_type": ...}). Received: a JSON '
            f"{_JSON_TYPES.get(type(config), type(config).__name__)}"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in model_types:
        raise ValueError(
            f"{source}: Unsupported architecture: model_type={model_type!r}. "
            f"Supported: {list(model_types)} ("
            + ", ".join(model_types.values())
            + ")"
        )
    return config


_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


class _Arrays:
    """Tensors already in memory: a mapping of names to arrays."""

    def __init__(self, arrays):
        self.arrays = arrays

    def keys(self):
        return list(self.arrays)

    def shape(self, key):
        return np.shape(self.arrays[key])

    def read(self, key):
        return self.arrays[key]


class _SafetensorsFile:
    """Tensors of an open `safe_open` handle, read from disk when asked."""

    def __init__(self, handle):
        self.handle = handle

    def keys(self):
        return list(self.handle.keys())

    def shape(self, key):
        return tuple(self.handle.get_slice(key).get_shape())

    def read(self, key):
        return self.handle.get_tensor(key)


class Weights:
    """A checkpoint's tensors by name, shape-checked, their use recorded.

    Names are the encoder's own. When some keys start with `prefix` (a
    model with a head, such as `BertForMaskedLM`, keeps its encoder under
    `bert.`), names are looked up under the prefix, and the keys without
    it belong to the head.

    Use it as a context manager: leaving the `with` block without an
    error reports the unused tensors, those never read that match none of
    the `ignore` patterns.

    Args:
        tensors: where the tensors come from (see `from_arrays` and
            `open_safetensors`).
        source: the checkpoint, as messages name it.
        prefix: the encoder's key prefix in checkpoints with a head.
            Defaults to `""` (none).
        ignore: `fnmatch` patterns of names the converter does not need
            (for keys outside the prefix: of the whole key). Defaults to
            none.
        unused: what unused tensors do when the block ends: `"warn"` (a
            `UserWarning` listing them), `"error"` (a `ValueError`
            listing them) or `"ignore"`. Defaults to `"warn"`.
    """

    def __init__(self, tensors, *, source, prefix="", ignore=(), unused="warn"):
        self._unused = _checks.choice("unused", unused, UNUSED_CHOICES)
        self._tensors = tensors
        self.source = source
        self._keys = set(tensors.keys())
        if not any(key.startswith(prefix) for key in self._keys):
            prefix = ""
        self._prefix = prefix
        self._ignore = tuple(ignore)
        self._used = set()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None:
            self.report_unused()

    def _key(self, name):
        key = self._prefix + name
        if key not in self._keys:
            raise ValueError(f"Missing weight {key!r} in the checkpoint")
        return key

    def shape(self, name: str) -> tuple:
        """The shape of weight `name`, without reading it."""
        return tuple(self._tensors.shape(self._key(name)))

    def get(self, name: str, shape: Iterable[int] | None = None) -> np.ndarray:
        """Weight `name` as a float32 array, recorded as used.

        Raises:
            ValueError: the checkpoint has no such weight, or (when `shape`
                is given) its shape is another; the message names the key
                and both shapes.
        """
        key = self._key(name)
        if shape is not None:
            found = tuple(self._tensors.shape(key))
            if found != tuple(shape):
                raise ValueError(
                    f"Weight {key!r} has shape {found}; expected "
                    f"{tuple(shape)} for this configuration"
                )
        self._used.add(key)
        return np.asarray(self._tensors.read(key), dtype="float32")

    def port(
        self, variable: keras.Variable, name: str, *, transpose: bool = False
    ) -> None:
        """Assign weight `name` to `variable`, checked against its shape.

        With `transpose`, the weight is the transposed (torch) layout of a
        2-D `variable`: a `Dense` kernel stored (out, in).
        """
        shape = tuple(variable.shape)
        value = self.get(name, shape[::-1] if transpose else shape)
        variable.assign(value.T if transpose else value)

    def _ignored(self, key):
        name = key.removeprefix(self._prefix)
        return any(fnmatch.fnmatchcase(name, p) for p in self._ignore)

    def report_unused(self) -> None:
        """Warn of, or refuse, the tensors never read (as `unused` says)."""
        unused = [
            key
            for key in self._keys
            if key not in self._used and not self._ignored(key)
        ]
        if not unused or self._unused == "ignore":
            return
        message = (
            f"{len(unused)} weight(s) of {self.source} were not used: "
            f"{', '.join(map(repr, sorted(unused)))}. The model has no "
            "place for them; unused='ignore' loads without this message"
        )
        if self._unused == "error":
            raise ValueError(message)
        # The user's call is at a depth that depends on the loader, so the
        # message names the checkpoint; attributed to this module, the
        # warning is caught by `error::UserWarning:keras_encoder` filters.
        warnings.warn(message, UserWarning, stacklevel=1)


def from_arrays(arrays: Mapping, *, unused: str = "warn") -> Weights:
    """`Weights` over a state dict: names mapped to arrays in memory."""
    return Weights(_Arrays(arrays), source="the state dict", unused=unused)


@contextlib.contextmanager
def open_safetensors(
    model_dir: str | os.PathLike,
    *,
    prefix: str = "",
    ignore: Iterable[str] = (),
    unused: str = "warn",
) -> Iterator[Weights]:
    """`Weights` of the checkpoint's `model.safetensors`, read lazily.

    A context manager: the file is open, and each tensor read only when
    asked for, inside the `with` block; leaving it without an error
    reports the unused tensors. Arguments as `Weights`.

    Raises:
        FileNotFoundError: the directory has no `model.safetensors`.
        ValueError: the file is not a readable safetensors file (truncated
            or damaged); the message names it.
    """
    path = _checkpoint_file(model_dir, "model.safetensors")
    from safetensors import SafetensorError
    from safetensors import safe_open

    try:
        opened = safe_open(path, framework="np")
    except SafetensorError as error:
        raise ValueError(
            f"model.safetensors at {path}: not a readable safetensors file "
            f"({error}); it may be truncated or damaged: copy or download "
            "it again"
        ) from None
    with opened as handle:
        with Weights(
            _SafetensorsFile(handle),
            source=path,
            prefix=prefix,
            ignore=ignore,
            unused=unused,
        ) as weights:
            yield weights


def port_dense(weights: Weights, dense: keras.layers.Dense, name: str) -> None:
    """A `Dense` layer from torch's `{name}.weight` (out, in) and, if the
    layer has a bias, `{name}.bias`."""
    weights.port(dense.kernel, f"{name}.weight", transpose=True)
    if dense.bias is not None:
        weights.port(dense.bias, f"{name}.bias")


def port_norm(
    weights: Weights, norm: keras.layers.LayerNormalization, name: str
) -> None:
    """A `LayerNormalization` from `{name}.weight` and, if it is centred,
    `{name}.bias`."""
    weights.port(norm.gamma, f"{name}.weight")
    if norm.beta is not None:
        weights.port(norm.beta, f"{name}.bias")


def port_stacked_dense(
    weights: Weights,
    denses: list[keras.layers.Dense],
    weight_name: str,
    bias_name: str,
) -> None:
    """Equal-width `Dense` layers from one torch weight that stacks theirs
    by rows (and, if they have biases, one bias): the query, key and value
    projections of torch's `in_proj_weight` or ModernBERT's `Wqkv`."""
    kernels = [dense.kernel for dense in denses]
    rows = sum(kernel.shape[1] for kernel in kernels)
    stacked = weights.get(weight_name, (rows, kernels[0].shape[0]))
    for kernel, part in zip(
        kernels, np.split(stacked, len(denses)), strict=True
    ):
        kernel.assign(part.T)
    if denses[0].bias is not None:
        biases = np.split(weights.get(bias_name, (rows,)), len(denses))
        for dense, part in zip(denses, biases, strict=True):
            dense.bias.assign(part)
