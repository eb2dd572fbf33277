import keras
import numpy as np
import pytest

from keras_encoder import SentencePooling
from tests.helpers import all_finite
from tests.helpers import padding_mask
from tests.helpers import to_numpy
from tests.helpers import value_and_gradients


@pytest.mark.parametrize("normalize", [False, True])
def test_masked_mean_matches_numpy(normalize):
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype("float32")
    mask = padding_mask([5, 2, 0], 5)
    out = to_numpy(SentencePooling(normalize=normalize)(x, mask=mask))
    expected = np.stack([x[0].mean(0), x[1, :2].mean(0), np.zeros(4)])
    if normalize:
        norms = np.linalg.norm(expected, axis=-1, keepdims=True)
        expected = expected / np.maximum(norms, 1e-12)
    np.testing.assert_allclose(out, expected, atol=1e-6)  # row 2: 0, not NaN


def test_cls_and_implicit_mask():
    tokens = np.array([[3, 4, 0], [5, 0, 0]])
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    cls = SentencePooling("cls", normalize=False)(embedded)
    embedded_np = to_numpy(embedded)
    np.testing.assert_allclose(to_numpy(cls), embedded_np[:, 0], atol=1e-7)
    mean = SentencePooling(normalize=False)(embedded)  # implicit mask
    np.testing.assert_allclose(to_numpy(mean)[1], embedded_np[1, 0], atol=1e-7)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_empty_rows_are_zero(policy):
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype("float32")
    out = SentencePooling(dtype=policy)(x, mask=padding_mask([3, 0], 3))
    out = to_numpy(keras.ops.cast(out, "float32"))
    assert np.isfinite(out).all() and (out[1] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0, atol=1e-2)


def test_symbolic_shape_and_bad_argument():
    assert SentencePooling()(keras.Input((None, 8))).shape == (None, 8)
    with pytest.raises(ValueError, match=r"argument `pooling`.*pooling='max'"):
        SentencePooling("max")


def test_bad_mask_is_a_clear_error():
    x = np.zeros((2, 3, 4), "float32")
    with pytest.raises(TypeError, match=r"`mask` must be boolean or integer"):
        SentencePooling()(x, mask=np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"axis 1 should be 3"):
        SentencePooling()(x, mask=np.ones((2, 4), bool))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_empty_rows_have_finite_gradients(pooling):
    """Normalising a zero vector: 0, with finite (zero) gradients."""
    x = np.random.default_rng(2).normal(size=(2, 3, 4)).astype("float32")
    layer = SentencePooling(pooling)
    out, grads = value_and_gradients(layer, x, mask=padding_mask([3, 0], 3))
    assert all_finite(out, *grads)
    assert (to_numpy(out)[1] == 0).all()
    assert (to_numpy(grads[0])[1] == 0).all()
