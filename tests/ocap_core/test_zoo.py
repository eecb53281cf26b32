import numpy as np
import pytest
import torch
import torch.nn as nn

from ocap_core.errors import OcapError
from ocap_core.export import export_onnx, find_classifier, onnx_parity, with_features
from ocap_core.runtime import open_session
from ocap_core.zoo import create_model, get_config, list_archs

pytestmark = pytest.mark.torch

TORCHVISION = ["tv:mobilenet_v2", "tv:resnet18"]


@pytest.mark.parametrize("arch", list_archs() + TORCHVISION)
@pytest.mark.parametrize("size", [28, 32])
def test_forward_shape(arch, size):
    model = create_model(arch, in_chans=1, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize("arch", list_archs())
def test_config_names_real_layers(arch):
    cfg = get_config(arch)
    model = create_model(arch, in_chans=3, num_classes=5)
    assert isinstance(model.get_submodule(cfg.first_conv), nn.Conv2d)
    assert model.get_submodule(cfg.first_conv).in_channels == 3
    assert isinstance(model.get_submodule(cfg.classifier), nn.Linear)
    assert find_classifier(model, (3, 32, 32)) == cfg.classifier
    assert cfg.description


@pytest.mark.parametrize("arch", list_archs() + TORCHVISION)
def test_onnx_export_matches_torch_and_has_features(arch, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch, in_chans=1, num_classes=10).eval()
    shape = (1, 28, 28)
    export_onnx(model, shape, tmp_path / "m.onnx")
    x = torch.randn(5, *shape)
    assert onnx_parity(model, tmp_path / "m.onnx", x) <= 1e-4
    sess = open_session(tmp_path / "m.onnx")
    assert [o.name for o in sess.get_outputs()] == ["logits", "features"]
    logits, feats = sess.run(None, {"input": x.numpy()})        # dynamic batch: 5, exported with 1
    classifier = model.get_submodule(find_classifier(model, shape))
    assert logits.shape == (5, 10) and feats.shape == (5, classifier.in_features)
    assert np.isfinite(feats).all()


def test_features_module_option_takes_that_modules_output():
    model = create_model("test_cnn").eval()
    x = torch.randn(3, 1, 28, 28)
    logits, feats = with_features(model, (1, 28, 28), features_module="pool")(x)
    assert torch.allclose(feats, model.forward_features(x)) and torch.allclose(logits, model(x))


def test_model_without_final_linear_needs_features_module():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(OcapError, match="--features-module"):
        find_classifier(model, (1, 28, 28))


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(OcapError, match="resnet20"):
        create_model("resnet21")
    with pytest.raises(OcapError, match="unknown torchvision model"):
        create_model("tv:not_a_model")


def test_user_file_class(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=1):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "        self.head = nn.Linear(4, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x))\n")
    model = create_model(f"{tmp_path}/net.py:Net", in_chans=3, num_classes=4)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 4)
    with pytest.raises(OcapError, match="no nn.Module class 'Nope'"):
        create_model(f"{tmp_path}/net.py:Nope")
    with pytest.raises(OcapError, match="does not exist"):
        create_model(f"{tmp_path}/missing.py:Net")
