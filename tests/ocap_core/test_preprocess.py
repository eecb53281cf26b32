import numpy as np
import pytest

from ocap_core.errors import OcapError
from ocap_core.preprocess import InputSpec, preprocess


def test_normalises_and_transposes():
    spec = InputSpec((3, 2, 2), scale=1 / 255, mean=(0.5, 0.0, 0.0), std=(0.5, 1.0, 2.0))
    img = np.full((2, 2, 3), 255, np.uint8)
    out = preprocess(img, spec)
    assert out.shape == (1, 3, 2, 2) and out.dtype == np.float32
    assert np.allclose(out[0, :, 0, 0], [1.0, 1.0, 0.5])


def test_batch_of_grey_images_and_colour_conversion():
    spec = InputSpec((1, 28, 28))
    assert preprocess(np.zeros((5, 28, 28), np.uint8), spec).shape == (5, 1, 28, 28)
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 1] = 255
    assert np.allclose(preprocess(rgb, spec), 0.587, atol=1e-3)
    assert preprocess(np.zeros((28, 28), np.uint8), InputSpec((3, 28, 28), mean=(0,) * 3, std=(1,) * 3)).shape \
        == (1, 3, 28, 28)


def test_wrong_image_shape_is_a_clear_error():
    with pytest.raises(OcapError, match="do not fit the model input 28x28"):
        preprocess(np.zeros((2, 32, 32), np.uint8), InputSpec((1, 28, 28)))


@pytest.mark.parametrize("kwargs,message", [
    ({"shape": (2, 28, 28)}, "channels must be 1"),
    ({"shape": (1, 28, 28), "std": (0.0,)}, "std must be positive"),
    ({"shape": (3, 28, 28), "mean": (0.1, 0.2)}, "mean needs 1 or 3"),
])
def test_bad_input_spec(kwargs, message):
    with pytest.raises(OcapError, match=message):
        InputSpec(**kwargs)


def test_round_trip_through_dict():
    spec = InputSpec((3, 32, 32), 1 / 255, (0.4, 0.5, 0.6), (0.2, 0.2, 0.3))
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["color"] == "rgb"
