"""SE-CNN classifier: shapes, the Squeeze-and-Excitation formula, arbitrary input sizes, gradients."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from gan.models import build  # noqa: E402
from gan.models.classifier import SEClassifier, SqueezeExcitation  # noqa: E402


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_logit_shape_and_size() -> None:
    torch.manual_seed(0)
    model = SEClassifier()
    assert model(torch.randn(3, 1, 64, 64)).shape == (3, 2)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    rgb = SEClassifier(in_channels=3, num_classes=5, widths=(8, 16, 32))
    assert rgb(torch.randn(2, 3, 48, 40)).shape == (2, 5)


def test_registry_builds_classifier() -> None:
    model = build("se-classifier", num_classes=4)
    assert isinstance(model, SEClassifier)
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


def test_se_zero_weights_give_sigmoid_of_bias() -> None:
    se = SqueezeExcitation(16, reduction=16)
    with torch.no_grad():
        se.fc1.weight.zero_()
        se.fc1.bias.fill_(3.0)
        se.fc2.weight.zero_()
        se.fc2.bias.copy_(torch.linspace(-2.0, 2.0, 16))
    x = torch.randn(2, 16, 5, 7)
    expected = torch.tensor([_sigmoid(b) for b in torch.linspace(-2.0, 2.0, 16).tolist()])
    scale = se.scale(x)
    assert scale.shape == (2, 16)
    torch.testing.assert_close(scale, expected.expand(2, 16))
    torch.testing.assert_close(se(x), x * expected[None, :, None, None])


def test_se_hand_set_weights() -> None:
    # C = 2, r = 2 → 1 hidden unit. Channel means m = (1, 3).
    se = SqueezeExcitation(2, reduction=2)
    assert se.hidden == 1
    x = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 3.0)])[None]
    with torch.no_grad():
        se.fc1.weight.copy_(torch.tensor([[0.5, 0.5]]))  # hidden = ReLU(0.5·1 + 0.5·3 + 0) = 2
        se.fc1.bias.zero_()
        se.fc2.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # (2 + 0, −2 + 0.5) = (2, −1.5)
        se.fc2.bias.copy_(torch.tensor([0.0, 0.5]))
    expected = torch.tensor([_sigmoid(2.0), _sigmoid(-1.5)])
    torch.testing.assert_close(se.scale(x), expected[None])
    out = se(x)
    assert out[0, 0].unique().item() == pytest.approx(1.0 * _sigmoid(2.0))
    assert out[0, 1].unique().item() == pytest.approx(3.0 * _sigmoid(-1.5))
    # ReLU cuts a negative hidden pre-activation: scale falls back to σ(b₂).
    with torch.no_grad():
        se.fc1.bias.fill_(-10.0)
    torch.testing.assert_close(se.scale(x), torch.sigmoid(se.fc2.bias.detach())[None])


@pytest.mark.parametrize(("channels", "hidden"), [(16, 1), (8, 1), (1, 1), (64, 4), (128, 8)])
def test_se_hidden_units(channels: int, hidden: int) -> None:
    se = SqueezeExcitation(channels, reduction=16)
    assert se.fc1.out_features == hidden
    assert se.fc2.in_features == hidden and se.fc2.out_features == channels


def test_every_block_has_se_with_r16() -> None:
    model = SEClassifier()
    ses = [m for m in model.modules() if isinstance(m, SqueezeExcitation)]
    assert [se.hidden for se in ses] == [1, 2, 4, 8]


@pytest.mark.parametrize("size", [(64, 64), (97, 131), (32, 32)])
def test_arbitrary_input_sizes(size: tuple[int, int]) -> None:
    model = SEClassifier().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


def test_rejects_bad_input() -> None:
    model = SEClassifier()
    with pytest.raises(ValueError, match=">= 32"):
        model(torch.randn(1, 1, 31, 64))
    with pytest.raises(ValueError, match="N×1×H×W"):
        model(torch.randn(1, 3, 64, 64))


def test_gradient_flows_to_every_parameter() -> None:
    torch.manual_seed(0)
    model = SEClassifier()
    x = torch.randn(4, 1, 48, 56, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.features[0].body[0].weight.grad.abs().sum() > 0
