"""ContextEnhancer and HybridDiscriminator: shapes, the paper's formulas on hand-set weights, conditioning."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from core.context import CONTEXT_SIZE  # noqa: E402
from gan.metrics import noise_sigma  # noqa: E402
from gan.models import build  # noqa: E402
from gan.models.enhancer import (  # noqa: E402
    AdaptiveModule,
    BicubicUpsample,
    ContextEnhancer,
    DiscriminatorOutput,
    HybridDiscriminator,
    MultiScaleBlock,
    NoiseLevelMap,
    NyquistFilter,
    ResidualAttentionBlock,
)

MAX_PARAMS = 1_500_000


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_gates(model: torch.nn.Module) -> None:
    """Give every ``"gated"`` α map a non-zero output conv (it starts at zero: α = 1 everywhere)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AdaptiveModule) and module.conditioning == "gated":
                torch.nn.init.normal_(module.gate_out.weight, std=1.0)
                torch.nn.init.normal_(module.gate_out.bias, std=0.5)


def check_output_shape(model: ContextEnhancer, in_channels: int, scale: int) -> None:
    """An odd batch of non-square (even-sided) inputs comes out ``scale`` times larger, with or without context."""
    x = torch.rand(3, in_channels, 20, 34)
    with torch.no_grad():
        out = model(x, torch.randn(3, CONTEXT_SIZE))
        blind = model(x)
    assert out.shape == (3, in_channels, 20 * scale, 34 * scale)
    assert blind.shape == out.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("upsampler", ["pixelshuffle", "transposed", "resize"])
def test_output_shapes(scale: int, in_channels: int, upsampler: str) -> None:
    model = ContextEnhancer(in_channels=in_channels, scale=scale, upsampler=upsampler).eval()
    check_output_shape(model, in_channels, scale)


@pytest.mark.parametrize("scale", [2, 4])
def test_parameter_count(scale: int) -> None:
    count = n_params(ContextEnhancer(scale=scale))
    print(f"ContextEnhancer(scale={scale}) parameters: {count}")
    assert 50_000 < count < MAX_PARAMS


def test_dynamic_batch_and_size_same_model() -> None:
    model = ContextEnhancer(scale=2).eval()
    with torch.no_grad():
        for n, h, w in [(1, 16, 16), (5, 17, 23), (2, 40, 12)]:
            assert model(torch.rand(n, 1, h, w), torch.rand(n, CONTEXT_SIZE)).shape == (n, 1, 2 * h, 2 * w)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ContextEnhancer(scale=3)
    with pytest.raises(ValueError):
        ContextEnhancer(upsampler="nearest")
    with pytest.raises(ValueError):
        ContextEnhancer(conditioning="concat")
    with pytest.raises(ValueError):
        ContextEnhancer(upsampler="transposed", transposed_kernel=3)
    with pytest.raises(ValueError):
        ContextEnhancer()(torch.rand(2, 1, 8, 8), torch.rand(2, CONTEXT_SIZE + 1))


def test_attention_gating_formula() -> None:
    c = 4
    block = ResidualAttentionBlock(c)
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.bias.zero_()  # σ(0) = 0.5 everywhere
        block.body.weight.zero_()
        for i in range(c):
            block.body.weight[i, i, 1, 1] = 2.0  # W ∗ X = 2·X (identity-like kernel)
        block.body.bias.fill_(0.25)
    x = torch.randn(2, c, 6, 7)
    y = block(x)
    assert torch.allclose(block.attention(x), torch.full_like(x, 0.5))
    assert torch.allclose(y, x + 0.5 * (2.0 * x + 0.25), atol=1e-6)

    # A gate that depends on X: bias −∞-like on channel 0 closes it, +∞-like on channel 1 opens it fully.
    with torch.no_grad():
        block.gate.bias.copy_(torch.tensor([-50.0, 50.0, 0.0, 0.0]))
    y = block(x)
    wx = 2.0 * x + 0.25
    assert torch.allclose(y[:, 0], x[:, 0], atol=1e-6)
    assert torch.allclose(y[:, 1], x[:, 1] + wx[:, 1], atol=1e-6)
    # General case against the formula computed independently.
    block = ResidualAttentionBlock(c)
    a = torch.sigmoid(F.conv2d(x, block.gate.weight, block.gate.bias, padding=1))
    wx = F.conv2d(x, block.body.weight, block.body.bias, padding=1)
    assert torch.allclose(block(x), x + a * wx, atol=1e-6)


def test_multiscale_fusion_weights() -> None:
    block = MultiScaleBlock(3)
    assert block.dilations == (1, 2, 3)
    with torch.no_grad():
        block.fusion_logits.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5])))
    assert torch.allclose(block.weights, torch.tensor([0.2, 0.3, 0.5]), atol=1e-6)
    assert torch.allclose(block.weights.sum(), torch.tensor(1.0))
    x = torch.randn(2, 3, 9, 11)
    expected = sum(lam * branch(x) for lam, branch in zip([0.2, 0.3, 0.5], block.branches, strict=True))
    assert torch.allclose(block(x), expected, atol=1e-6)
    # Receptive fields 3, 5, 7: the branches see different neighbourhoods and keep the spatial size.
    for branch, d in zip(block.branches, (1, 2, 3), strict=True):
        assert branch[0].dilation == (d, d)
        assert branch(x).shape == x.shape


def test_alpha_from_hand_set_mlp() -> None:
    model = ContextEnhancer(n_blocks=2)
    mlp = model.context_mlp
    assert mlp is not None
    field = 3
    with torch.no_grad():
        for p in mlp.parameters():
            p.zero_()
        mlp.hidden.weight[0, field] = 1.0  # hidden_0 = context[field]
        mlp.out.weight[0, 0] = 1.0  # block 0 logit = silu(context[field])
        mlp.out.bias[1] = -1.0  # block 1 logit = −1 whatever the context
    ctx = torch.zeros(2, CONTEXT_SIZE)
    ctx[0, field] = 1.5
    ctx[1, field] = -0.7
    alphas = model.alphas(ctx)
    assert alphas.shape == (2, 2)
    expected0 = 2.0 * torch.sigmoid(F.silu(torch.tensor([1.5, -0.7])))
    assert torch.allclose(alphas[:, 0], expected0, atol=1e-6)
    assert torch.allclose(alphas[:, 1], torch.full((2,), 2.0 * torch.sigmoid(torch.tensor(-1.0)).item()))
    # Zero context → logit 0 → α = 1; context None is the zero context.
    assert torch.allclose(model.alphas(None), torch.tensor([[1.0, 2.0 * torch.sigmoid(torch.tensor(-1.0)).item()]]))
    assert (model.alphas(torch.randn(16, CONTEXT_SIZE) * 10) >= 0).all()


def test_alpha_zero_is_identity_and_alpha_scales_residual() -> None:
    module = AdaptiveModule(4, "alpha")
    x = torch.randn(3, 4, 8, 5)
    assert torch.equal(module(x, torch.zeros(3, 1)), x)
    f = module.residual(x)
    alpha = torch.tensor([0.0, 0.5, 1.7])
    y = module(x, alpha)
    assert torch.allclose(y, x + alpha.view(3, 1, 1, 1) * f, atol=1e-6)
    assert torch.equal(y[0], x[0])


def test_film_and_none_modules() -> None:
    x = torch.randn(2, 4, 6, 6)
    film = AdaptiveModule(4, "film")
    assert torch.allclose(film(x, torch.cat([-torch.ones(2, 4), torch.zeros(2, 4)], dim=1)), x)  # γ = 0, β = 0
    mod = torch.randn(2, 8)
    expected = x + (1 + mod[:, :4, None, None]) * film.residual(x) + mod[:, 4:, None, None]
    assert torch.allclose(film(x, mod), expected, atol=1e-6)
    plain = AdaptiveModule(4, "none")
    assert torch.allclose(plain(x), x + plain.residual(x))


@pytest.mark.parametrize("conditioning", ["alpha", "film"])
def test_context_changes_output_and_none_is_zero_context(conditioning: str) -> None:
    model = ContextEnhancer(conditioning=conditioning).eval()
    x = torch.rand(2, 1, 16, 16)
    c1 = torch.zeros(2, CONTEXT_SIZE)
    c2 = torch.zeros(2, CONTEXT_SIZE)
    c2[:, 6] = 3.0  # z_motion high
    c2[:, 13] = 1.0  # mask_motion present
    with torch.no_grad():
        out_none = model(x)
        out_zero = model(x, c1)
        out_other = model(x, c2)
    assert torch.equal(out_none, out_zero)
    assert (out_other - out_zero).abs().max() > 1e-6


def test_unconditioned_model_ignores_context() -> None:
    model = ContextEnhancer(conditioning="none").eval()
    assert model.context_mlp is None
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, torch.randn(1, CONTEXT_SIZE)))


def test_global_residual_base_is_bicubic() -> None:
    model = ContextEnhancer(scale=2).eval()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
        x = torch.rand(2, 1, 10, 14)
        out = model(x, torch.randn(2, CONTEXT_SIZE))
    assert torch.allclose(out, F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False))
    clamped = ContextEnhancer(clamp=True).eval()
    with torch.no_grad():
        y = clamped(torch.rand(2, 1, 10, 10) * 3 - 1)
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("scale", [2, 4])
def test_transposed_upsampler(scale: int) -> None:
    model = ContextEnhancer(scale=scale, upsampler="transposed")
    convs = [m for m in model.upsample if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == {2: 1, 4: 2}[scale]
    for conv in convs:
        assert conv.kernel_size[0] % conv.stride[0] == 0 and conv.kernel_size[1] % conv.stride[1] == 0
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 13, 9)).shape == (1, 1, 13 * scale, 9 * scale)
    six = ContextEnhancer(scale=scale, upsampler="transposed", transposed_kernel=6)
    assert six(torch.rand(1, 1, 7, 8)).shape == (1, 1, 7 * scale, 8 * scale)


@pytest.mark.parametrize("trunk", ["lowres", "unshuffle"])
def test_gradient_reaches_context_mlp_head_and_tail(trunk: str) -> None:
    model = ContextEnhancer(trunk=trunk)
    x = torch.rand(2, 1, 12, 12)
    loss = (model(x, torch.randn(2, CONTEXT_SIZE)) - 0.5).abs().mean()
    loss.backward()
    mlp = model.context_mlp
    assert mlp is not None
    tail = model.tail if trunk == "unshuffle" else model.trunk_tail
    for p in (mlp.hidden.weight, mlp.out.weight, mlp.out.bias, model.head.weight, tail.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize(("size", "patch"), [(64, 6), (128, 14)])
def test_discriminator_patch_map_and_combination(size: int, patch: int) -> None:
    disc = HybridDiscriminator(alpha=0.3, beta=0.7)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    out = disc(torch.rand(3, 1, size, size))
    assert isinstance(out, DiscriminatorOutput)
    assert out.patch.shape == (3, 1, patch, patch)
    assert out.global_.shape == (3, 1)
    assert out.combined.shape == (3, 1)
    expected = 0.3 * out.patch.mean(dim=(2, 3)) + 0.7 * out.global_
    assert torch.allclose(out.combined, expected, rtol=0, atol=1e-7)


def test_discriminator_rgb_and_non_square_without_spectral_norm() -> None:
    disc = HybridDiscriminator(in_channels=3, base_channels=16, spectral_norm=False)
    assert (disc.alpha, disc.beta) == (0.5, 0.5)
    out = disc(torch.rand(1, 3, 64, 96))
    assert out.patch.shape == (1, 1, 6, 10)
    assert torch.equal(out.combined, 0.5 * out.patch.mean(dim=(2, 3)) + 0.5 * out.global_)


def test_registry() -> None:
    gen = build("enhancer", scale=4, in_channels=3)
    assert isinstance(gen, ContextEnhancer) and gen.scale == 4
    disc = build("enhancer-discriminator", alpha=0.5, beta=0.5)
    assert isinstance(disc, HybridDiscriminator)
    print(f"HybridDiscriminator parameters: {n_params(disc)}")


# --------------------------------------------------------------------------- trunk="unshuffle"


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_unshuffle_output_shapes(scale: int, in_channels: int) -> None:
    model = ContextEnhancer(in_channels=in_channels, scale=scale, trunk="unshuffle").eval()
    assert model.size_multiple == 2
    assert isinstance(model.unshuffle, torch.nn.PixelUnshuffle) and isinstance(model.shuffle, torch.nn.PixelShuffle)
    assert len(model.upsample) == 0  # straight to the output resolution: no upsampling stages
    assert model.head.in_channels == 4 * in_channels
    assert model.tail.out_channels == (2 * scale) ** 2 * in_channels
    check_output_shape(model, in_channels, scale)


def test_unshuffle_shares_blocks_with_lowres() -> None:
    """Same block / trunk-tail / context-MLP parameters (names and shapes); only head, upsample and tail differ."""
    low = {k: v.shape for k, v in ContextEnhancer(trunk="lowres").state_dict().items()}
    uns = {k: v.shape for k, v in ContextEnhancer(trunk="unshuffle").state_dict().items()}
    ends = ("head.", "upsample.", "tail.")
    assert {k: s for k, s in low.items() if not k.startswith(ends)} == {
        k: s for k, s in uns.items() if not k.startswith(ends)
    }


@pytest.mark.parametrize("scale", [2, 4])
def test_unshuffle_parameter_count(scale: int) -> None:
    count = n_params(ContextEnhancer(scale=scale, trunk="unshuffle"))
    lowres = n_params(ContextEnhancer(scale=scale))
    print(f"ContextEnhancer(scale={scale}, trunk='unshuffle') parameters: {count} (lowres: {lowres})")
    assert 50_000 < count < MAX_PARAMS


def test_unshuffle_odd_size_and_bad_arguments() -> None:
    model = ContextEnhancer(trunk="unshuffle").eval()
    for h, w in [(15, 16), (16, 15), (9, 9)]:
        with pytest.raises(ValueError, match="divisible by 2"):
            model(torch.rand(1, 1, h, w))
        with pytest.raises(ValueError, match="divisible by 2"):
            model.check_input_size(h, w)
    model.check_input_size(16, 18)
    ContextEnhancer().check_input_size(15, 9)  # lowres: any size
    with pytest.raises(ValueError):
        ContextEnhancer(trunk="shuffle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ContextEnhancer(trunk="unshuffle", upsampler="transposed")


@pytest.mark.parametrize("scale", [2, 4])
def test_unshuffle_global_residual_base_is_bicubic(scale: int) -> None:
    model = ContextEnhancer(scale=scale, trunk="unshuffle").eval()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
        x = torch.rand(2, 1, 10, 14)
        out = model(x, torch.randn(2, CONTEXT_SIZE))
    assert torch.allclose(out, F.interpolate(x, scale_factor=float(scale), mode="bicubic", align_corners=False))


@pytest.mark.parametrize(
    "config",
    [
        {"scale": 2, "trunk": "unshuffle"},
        {"scale": 4, "trunk": "unshuffle"},
        {"scale": 2, "upsampler": "transposed", "tail": "direct", "gate_kernel": 1},
        {"scale": 4, "upsampler": "pixelshuffle", "tail": "direct"},
        {"scale": 2, "upsampler": "transposed", "tail": "direct", "gate_kernel": 1, "noise_input": "map"},
        {"scale": 2, "trunk": "unshuffle", "noise_input": "map"},
        {"scale": 2, "upsampler": "resize", "tail": "direct", "gate_kernel": 1, "conditioning": "gated"},
        {"scale": 4, "upsampler": "resize", "conditioning": "gated"},
        {"scale": 2, "upsampler": "resize", "tail": "direct", "conditioning": "gated", "residual_filter": "nyquist"},
    ],
)
def test_onnx_export_and_parity(config: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import warnings

    from gan.export import export_onnx, parity

    model = ContextEnhancer(channels=16, n_blocks=2, **config).eval()
    with torch.no_grad():  # a non-trivial residual, so parity tests the learned path, not just the bicubic base
        model.output_layer.weight.mul_(10.0)
        randomise_gates(model)
    example = (torch.rand(2, 1, 16, 20), torch.rand(2, CONTEXT_SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        path = export_onnx(model, example, tmp_path / "enh.onnx", ["image", "context"], ["enhanced"])
    cases = [
        (torch.rand(1, 1, 24, 18), torch.rand(1, CONTEXT_SIZE)),
        (torch.rand(3, 1, 32, 40), torch.rand(3, CONTEXT_SIZE)),
    ]
    report = parity(model, path, cases)
    assert report.passed and len(report.cases) == 2
    print(f"{config} ONNX parity max abs {report.max_abs_error:.2e}")
    import onnx

    assert "Resize" not in {node.op_type for node in onnx.load(str(path)).graph.node}  # bicubic base is a conv


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_bicubic_conv_equals_torch_bicubic(scale: int, channels: int) -> None:
    up = BicubicUpsample(channels, scale)
    generator = torch.Generator().manual_seed(scale * 10 + channels)
    for h, w in ((1, 1), (2, 3), (5, 7), (64, 48)):
        x = torch.rand(2, channels, h, w, generator=generator)
        expected = F.interpolate(x, scale_factor=float(scale), mode="bicubic", align_corners=False)
        got = up(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 2e-6, (h, w)
    assert not list(up.parameters()) and not up.state_dict()  # fixed, not learned, not saved
    assert "bicubic.weight" not in ContextEnhancer(scale=scale).state_dict()


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("upsampler", ["pixelshuffle", "transposed"])
def test_direct_tail_has_no_output_resolution_conv(scale: int, in_channels: int, upsampler: str) -> None:
    model = ContextEnhancer(in_channels=in_channels, scale=scale, upsampler=upsampler, tail="direct").eval()
    check_output_shape(model, in_channels, scale)
    assert isinstance(model.tail, torch.nn.Identity)
    last = model.output_layer
    assert last is model.upsample[-2 if upsampler == "pixelshuffle" else -1]
    out_channels = last.out_channels // (4 if upsampler == "pixelshuffle" else 1)
    assert out_channels == in_channels  # the last stage makes the image: nothing learned runs after it
    assert not isinstance(model.upsample[-1], torch.nn.LeakyReLU)
    convs = [m for m in model.upsample if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(convs) == {2: 1, 4: 2}[scale]
    assert n_params(model) < n_params(ContextEnhancer(in_channels=in_channels, scale=scale, upsampler=upsampler))
    # Zero output layer → exactly the bicubic base (the residual path ends there).
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        x = torch.rand(2, in_channels, 10, 14)
        out = model(x, torch.randn(2, CONTEXT_SIZE))
    bicubic = F.interpolate(x, scale_factor=float(scale), mode="bicubic", align_corners=False)
    assert torch.allclose(out, bicubic, atol=1e-6)  # the fixed bicubic conv equals interpolate to float rounding


def test_one_by_one_gate_formula() -> None:
    c = 4
    block = ResidualAttentionBlock(c, gate_kernel=1)
    assert block.gate.kernel_size == (1, 1) and block.body.kernel_size == (3, 3)
    x = torch.randn(2, c, 6, 7)
    a = torch.sigmoid(torch.einsum("oi,nihw->nohw", block.gate.weight[:, :, 0, 0], x) + block.gate.bias[:, None, None])
    wx = F.conv2d(x, block.body.weight, block.body.bias, padding=1)
    assert torch.allclose(block(x), x + a * wx, atol=1e-6)
    model = ContextEnhancer(gate_kernel=1)
    assert all(b.attention.gate.kernel_size == (1, 1) for b in model.blocks)


def test_direct_tail_and_gate_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tail"):
        ContextEnhancer(tail="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lowres"):
        ContextEnhancer(tail="direct", trunk="unshuffle")
    with pytest.raises(ValueError, match="scale"):
        ContextEnhancer(tail="direct", scale=1)
    with pytest.raises(ValueError, match="gate_kernel"):
        ContextEnhancer(gate_kernel=5)


def test_noise_level_map_is_immerkaer_estimate() -> None:
    """Flat + Gaussian noise σ → both channels ≈ σ·gain; a constant or linear ramp → 0; the image passes through."""
    gain = 50.0
    noise_map = NoiseLevelMap(1, window=7, gain=gain)
    assert not list(noise_map.parameters()) and not noise_map.state_dict()  # fixed, not learned, not saved
    sigma = 0.02
    x = 0.5 + sigma * torch.randn(4, 1, 96, 96)
    out = noise_map(x)
    assert out.shape == (4, 3, 96, 96)
    assert torch.equal(out[:, :1], x)
    global_ = out[:, 2] / gain
    assert torch.allclose(global_, global_[:, :1, :1].expand_as(global_))  # one value per image
    assert abs(global_.mean().item() - sigma) < 0.05 * sigma
    assert abs((out[:, 1] / gain).mean().item() - sigma) < 0.05 * sigma
    for image, level in zip(x[:, 0].double().numpy(), global_[:, 0, 0].tolist(), strict=True):  # = gan.metrics
        assert level == pytest.approx(noise_sigma(image), rel=0.03)  # (it also counts the replicated border)
    ramp = torch.linspace(0, 1, 40).reshape(1, 1, 1, 40).expand(1, 1, 30, 40)  # the Laplacian-like M kills ramps
    assert noise_map(ramp)[:, 1:].abs().max() < 1e-5
    # Local: a noisy half and a clean half differ; per channel for RGB.
    half = torch.full((1, 3, 32, 64), 0.5)
    half[:, 1, :, :32] += 0.03 * torch.randn(32, 32)
    local = NoiseLevelMap(3, gain=1.0)(half)[:, 3:6]
    assert local[0, 1, :, :20].mean() > 0.02 and local[0, 1, :, 44:].max() < 1e-6
    assert local[0, 0].max() < 1e-6 and local[0, 2].max() < 1e-6
    with pytest.raises(ValueError, match="window"):
        NoiseLevelMap(1, window=4)


def test_noise_input_map_enters_the_head() -> None:
    plain = ContextEnhancer(channels=16, n_blocks=1)
    model = ContextEnhancer(channels=16, n_blocks=1, noise_input="map").eval()
    assert model.head.in_channels == 3 and plain.head.in_channels == 1
    assert n_params(model) - n_params(plain) == 2 * 16 * 9  # two more input channels of one 3×3 conv
    check_output_shape(model, 1, 2)
    rgb = ContextEnhancer(in_channels=3, channels=16, n_blocks=1, noise_input="map", trunk="unshuffle")
    assert rgb.head.in_channels == 3 * 3 * 4
    with pytest.raises(ValueError, match="noise_input"):
        ContextEnhancer(noise_input="given")  # type: ignore[arg-type]


def test_pixelshuffle_stages_start_without_a_checkerboard() -> None:
    """ICNR: the four sub-pixel phases of every PixelShuffle stage start equal, so a fresh model's residual over
    bicubic has no 2-periodic pattern (the artefact transposed convolutions are known for)."""
    torch.manual_seed(0)
    model = ContextEnhancer(n_blocks=1, upsampler="pixelshuffle", tail="direct", gate_kernel=1).eval()
    x = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        residual = (model(x) - model.base(x))[0, 0]
    phases = [residual[i::2, j::2] for i in range(2) for j in range(2)]
    assert residual.abs().max() > 1e-3  # the residual is not trivially zero
    assert all(torch.allclose(p, phases[0], atol=1e-6) for p in phases[1:])


def test_gated_alpha_map_formula_and_start() -> None:
    """``"gated"``: Y = X + α(X, e) ⊙ F(X), α = 2·σ(Conv1×1(SiLU(Conv3×3(X) + e))) per pixel; α ≡ 1 at start."""
    module = AdaptiveModule(4, "gated")
    x = torch.randn(2, 4, 9, 7)
    e = torch.randn(2, module.gate_features.out_channels)
    assert torch.allclose(module(x, e), x + module.residual(x), atol=1e-6)  # fresh: α = 1, the context has no say
    randomise_gates(module)
    features = F.conv2d(x, module.gate_features.weight, module.gate_features.bias, padding=1)
    hidden = F.silu(features + e[:, :, None, None])
    alpha = 2 * torch.sigmoid(F.conv2d(hidden, module.gate_out.weight, module.gate_out.bias)).detach()
    assert alpha.shape == (2, 1, 9, 7) and float(alpha.std()) > 1e-3  # a map: the image decides per pixel
    assert bool(((alpha > 0) & (alpha < 2)).all())
    assert torch.allclose(module(x, e), x + alpha * module.residual(x), atol=1e-5)
    assert not torch.allclose(module(x, e), module(x, -e))  # the context decides too


def test_gated_model_context_changes_output_and_none_is_zero_context() -> None:
    model = ContextEnhancer(conditioning="gated", n_blocks=2).eval()
    randomise_gates(model)
    x = torch.rand(2, 1, 16, 16)
    other = torch.zeros(2, CONTEXT_SIZE)
    other[:, 6], other[:, 13] = 3.0, 1.0  # motion high, present
    with torch.no_grad():
        assert torch.equal(model(x), model(x, torch.zeros(2, CONTEXT_SIZE)))
        assert (model(x, other) - model(x)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="alphas"):
        model.alphas(other)  # α is a per-pixel map here, not one value per block


def test_resize_upsampler_leaves_no_checkerboard_where_sub_pixel_phases_do() -> None:
    """Resize-convolution (fixed bicubic ×2, then a conv) cannot make the sub-pixel phases differ: with random
    weights (three seeds) its residual over bicubic stays under the shipped models' checkerboard bound on a noisy
    disc, while a PixelShuffle stage whose phases differ (as training moves them from ICNR's equal start) puts
    nearly all of its high band at the Nyquist points."""
    from gan.metrics import checkerboard_ratio

    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    disc = 0.5 + 0.3 * torch.tanh(8 * (0.5 - (xx**2 + 0.7 * yy**2).sqrt()))
    x = (disc + 0.02 * torch.randn(64, 64, generator=generator))[None, None]
    ratios: dict[str, list[float]] = {"resize": [], "pixelshuffle": []}
    for upsampler, seed in [(u, s) for u in ratios for s in (1, 2, 3)]:
        torch.manual_seed(seed)
        model = ContextEnhancer(n_blocks=1, upsampler=upsampler, tail="direct", gate_kernel=1).eval()
        with torch.no_grad():
            torch.nn.init.normal_(model.output_layer.weight, std=0.05)  # phases no longer equal
            out, base = model(x)[0, 0], model.base(x)[0, 0]
        assert float((out - base).abs().max()) > 1e-2  # a real residual
        ratios[upsampler].append(checkerboard_ratio(out.numpy(), base.numpy()))
    assert max(ratios["resize"]) < 0.15 < 0.5 < min(ratios["pixelshuffle"]), ratios


def test_nyquist_filter_passes_dc_stops_nyquist_and_is_not_learned() -> None:
    smooth = NyquistFilter(1)
    assert not list(smooth.parameters()) and not smooth.state_dict()
    ones = torch.ones(1, 1, 12, 10)
    assert torch.allclose(smooth(ones), ones, atol=1e-6)  # DC gain 1, edges replicated
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for pattern in ((-1.0) ** xx, (-1.0) ** yy, (-1.0) ** (xx + yy)):  # the three checkerboards
        assert smooth(pattern[None, None])[..., 4:-4, 4:-4].abs().max() < 1e-6
    quarter = torch.cos(torch.pi / 2 * xx)[None, None]  # f = ¼ passes at 0.75
    assert torch.allclose(smooth(quarter)[..., 4:-4, 4:-4], 0.75 * quarter[..., 4:-4, 4:-4], atol=1e-5)


def test_residual_filter_removes_the_checkerboard_of_unequal_phases() -> None:
    """With ``residual_filter="nyquist"`` even a PixelShuffle stage with unequal phases leaves no checkerboard, and the
    filter is a configuration change: the same state dict loads with and without it."""
    from gan.metrics import checkerboard_ratio

    generator = torch.Generator().manual_seed(0)
    x = (0.5 + 0.02 * torch.randn(64, 64, generator=generator))[None, None]
    torch.manual_seed(1)
    plain = ContextEnhancer(n_blocks=1, upsampler="pixelshuffle", tail="direct", gate_kernel=1).eval()
    with torch.no_grad():
        torch.nn.init.normal_(plain.output_layer.weight, std=0.05)
    filtered = ContextEnhancer(n_blocks=1, upsampler="pixelshuffle", tail="direct", gate_kernel=1,
                               residual_filter="nyquist").eval()  # fmt: skip
    filtered.load_state_dict(plain.state_dict())
    with torch.no_grad():
        base = plain.base(x)[0, 0].numpy()
        ratios = [checkerboard_ratio(m(x)[0, 0].numpy(), base) for m in (plain, filtered)]
    assert ratios[1] < 0.01 < 0.5 < ratios[0], ratios
    with pytest.raises(ValueError, match="residual_filter"):
        ContextEnhancer(residual_filter="blur")
