"""The model registry: shapes, the pool-first variant, and state-dict names that saved runs depend on."""
import pytest
import torch
from torch import nn

from mnist_dist import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_maps_images_to_ten_logits(name):
    assert models.build(name)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_default_cnn_bn_keeps_its_state_dict_names():
    """model.safetensors files written earlier load by these names."""
    keys = list(models.build("cnn_bn").state_dict())
    assert keys[:2] == ["0.0.weight", "0.1.weight"] and keys[-2:] == ["8.weight", "8.bias"]
    assert "4.0.weight" in keys and models.num_parameters(models.build("cnn_bn")) == 104_426


def test_pool_first_normalises_the_pooled_map_and_hidden_adds_a_layer():
    model = models.build("cnn_bn", width=8, pool_first=True, hidden=32)
    seen = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[-1]))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert seen == [14, 7, 3]  # the default order normalises 28, 14, 7
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 9, 32), (32, 10)]


def test_stem_stride_halves_the_map_in_the_first_convolution_and_keeps_the_names():
    """fast_mnist's stem: nothing runs on a 28x28 map of `width` channels, and the weights keep cnn_bn's names
    (the same state-dict keys and shapes: a stride is not a weight)."""
    model = models.build("cnn_bn", width=8, pool_first=True, hidden=32, stem_stride=2)
    sizes = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[-1]))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sizes == [14, 7, 3]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    pooled = models.build("cnn_bn", width=8, pool_first=True, hidden=32)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in pooled.state_dict().items()}


def test_avg_pool_replaces_every_max_pool():
    model = models.build("cnn_bn", width=8, pool="avg", num_classes=4)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_cnn_fast_passes_the_class_count_through():
    assert models.build("cnn_fast", num_classes=4)(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
