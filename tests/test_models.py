import pytest
import torch

from pneumo_ray.train.models import backbone_frozen, build_model, freeze_backbone, train_mode


@pytest.mark.parametrize("name", ["cnn", "densenet"])
@pytest.mark.parametrize("size", [64, 224])
def test_forward_backward(name, size):
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(2, 1, size, size)
    out = model(x)
    assert out.shape == (2,)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_densenet_is_densenet121_with_one_channel():
    m = build_model("densenet")
    assert m.features.conv0.in_channels == 1
    n_params = sum(p.numel() for p in m.parameters())
    assert 6_900_000 < n_params < 7_000_000  # DenseNet-121 with a 1-logit head


def test_freeze_backbone_trains_head_only():
    torch.manual_seed(0)
    m = build_model("cnn")
    freeze_backbone(m)
    assert backbone_frozen(m)
    before = {k: v.clone() for k, v in m.features.state_dict().items()}
    train_mode(m)
    assert m.classifier.training and not m.features.training
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.classifier(m.features(torch.randn(4, 1, 32, 32))).sum().backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.features.state_dict().items())


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
