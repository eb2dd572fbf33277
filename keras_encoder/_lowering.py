"""How layers lower to ops while an export traces them.

Inside `integer_friendly()`, layers that have a formulation which
quantizes better to integers (int8 / int16 activations) trace that one
instead. Both formulations compute the same float function (the export
checks the float graph against the Keras model, 1e-5, before quantizing);
they differ in which tensors the graph holds, and so in what a
per-tensor integer scale has to cover:

- `SentencePooling(pooling="mean")`: the masked mean as a weighted sum,
  `sum(states * w)` with `w = softmax(0 at real tokens, -1e4 at padded)`,
  not `sum(states) / count`: a sum over 128 tokens spans 128 times the
  states' range, and an integer division by the count has no int16
  kernel. L2 normalisation as `x * rsqrt(max(sum(x^2), 1e-12))`.

Eager Keras calls, training and the float, float16 and dynamic-range
exports never enter it: their graphs and op counts are unchanged.
"""

import contextlib
import contextvars

_INTEGER_FRIENDLY = contextvars.ContextVar(
    "keras_encoder_integer_friendly", default=False
)


@contextlib.contextmanager
def integer_friendly():
    """Trace layers in their integer-friendly formulation inside."""
    token = _INTEGER_FRIENDLY.set(True)
    try:
        yield
    finally:
        _INTEGER_FRIENDLY.reset(token)


def is_integer_friendly() -> bool:
    """Whether `integer_friendly()` is active."""
    return _INTEGER_FRIENDLY.get()
