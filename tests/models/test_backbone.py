"""ResNet / FPN backbone: torchvision oracle, shapes and strides, freezing, norms, loading errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from pointsup.config import BackboneConfig
from pointsup.models.backbone import ResNet, build_backbone, load_torchvision_resnet
from pointsup.models.fpn import FPN
from pointsup.models.norm import convert_frozen_batchnorm, get_norm


def _randomize_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics and affine terms, so a wrongly mapped norm shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                C = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(C, generator=g))
                m.running_var.copy_(0.5 + torch.rand(C, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(C, generator=g))
                m.bias.copy_(0.1 * torch.randn(C, generator=g))


def _torchvision_stages(tv: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for i, name in enumerate(["layer1", "layer2", "layer3", "layer4"]):
        x = getattr(tv, name)(x)
        out[f"c{i + 2}"] = x
    return out


@pytest.mark.parametrize(
    "tv_name, depth, groups, width_per_group",
    [("resnet18", 18, 1, 64), ("resnet50", 50, 1, 64), ("resnext50_32x4d", 50, 32, 4)],
)
def test_loading_torchvision_weights_reproduces_its_features(tmp_path, tv_name, depth, groups, width_per_group):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, tv_name)().eval()
    _randomize_batchnorms(tv)
    path = tmp_path / f"{tv_name}.pth"
    torch.save(tv.state_dict(), path)

    ours = ResNet(depth, groups=groups, width_per_group=width_per_group, norm="FrozenBN", freeze_at=0)
    load_torchvision_resnet(ours, str(path))
    ours.eval()

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _torchvision_stages(tv, x)
        got = ours(x)
        logits = tv(x)
    assert list(got) == ["c2", "c3", "c4", "c5"]
    for name in expected:
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4 * scale)
    # the stage oracle itself follows torchvision's forward (C5 -> avgpool -> fc)
    torch.testing.assert_close(tv.fc(expected["c5"].mean((2, 3))), logits, rtol=1e-4, atol=1e-4)


def test_stride_in_1x1_moves_the_stride(tmp_path):
    ours = ResNet(50, freeze_at=0, stride_in_1x1=True)
    block = ours.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    ours = ResNet(50, freeze_at=0, stride_in_1x1=False)
    block = ours.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_resnext101_32x8d_has_torchvision_shapes():
    with torch.device("meta"):  # shapes only: skip allocating and initialising 88M weights
        ours = ResNet(101, groups=32, width_per_group=8, norm="FrozenBN", freeze_at=0)
        tv = torchvision.models.resnext101_32x8d()
    tv_shapes = {k: v.shape for k, v in tv.state_dict().items()}
    own_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    expected = {k: s for k, s in tv_shapes.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert own_shapes == expected


@pytest.mark.parametrize("top_block", ["maxpool", "p6p7"])
@pytest.mark.parametrize("size", [(64, 96), (70, 100)])
def test_resnet_fpn_shapes_and_strides(top_block, size):
    cfg = BackboneConfig(depth=18, norm="FrozenBN", fpn_channels=32)
    model = build_backbone(cfg, top_block=top_block).eval()
    H, W = size
    with torch.no_grad():
        feats = model(torch.randn(2, 3, H, W))
    names = ["p2", "p3", "p4", "p5", "p6"] if top_block == "maxpool" else ["p3", "p4", "p5", "p6", "p7"]
    assert list(feats) == names
    assert list(model.strides) == names
    assert model.out_channels == 32
    for name, f in feats.items():
        s = model.strides[name]
        assert s == 2 ** int(name[1:])
        # convs with padding round up: ceil(H / s) at every level
        assert f.shape == (2, 32, -(-H // s), -(-W // s)), name


def test_fpn_from_list_and_top_down_path():
    fpn = FPN([8, 16, 32], out_channels=8, top_block="p6p7")
    assert fpn.in_features == ["c3", "c4", "c5"]
    feats = {"c3": torch.randn(1, 8, 16, 16), "c4": torch.randn(1, 16, 8, 8), "c5": torch.randn(1, 32, 4, 4)}
    out = fpn(feats)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    # the top-down path: changing C5 changes P3
    feats2 = dict(feats, c5=torch.randn(1, 32, 4, 4))
    assert not torch.allclose(fpn(feats2)["p3"], out["p3"])
    # P6 by max-pool is P5 subsampled
    fpn = FPN({"c2": 4, "c3": 8, "c4": 16, "c5": 32}, out_channels=8)
    out = fpn({"c2": torch.randn(1, 4, 32, 32), **feats})
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_freezes_exactly_the_stem_and_early_stages(freeze_at):
    model = ResNet(18, norm="BN", freeze_at=freeze_at)
    frozen_prefixes = (["conv1.", "bn1."], ["layer1."], ["layer2."], ["layer3."], ["layer4."])[:freeze_at]
    frozen_prefixes = tuple(p for stage in frozen_prefixes for p in stage)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    # frozen stages' BNs became FrozenBatchNorm2d; trainable ones are still BatchNorm2d
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not (name + ".").startswith(frozen_prefixes), name
        if isinstance(m, FrozenBatchNorm2d):
            assert (name + ".").startswith(frozen_prefixes), name
    if freeze_at < 5:
        assert isinstance(model.layer4[0].bn1, nn.BatchNorm2d)
    # model.train() + a forward leave frozen stages unchanged
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    c5 = model(torch.randn(2, 3, 64, 64))["c5"]
    assert c5.requires_grad == (freeze_at < 5)
    if c5.requires_grad:
        c5.sum().backward()
    after = model.state_dict()
    for k in before:
        if k.startswith(frozen_prefixes):
            assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "SyncBN", "GN", ""])
def test_each_norm_builds_and_trains(norm):
    cfg = BackboneConfig(depth=18, norm=norm, freeze_at=0, fpn_channels=32, fpn_norm="GN" if norm == "GN" else "")
    model = build_backbone(cfg).train()
    feats = model(torch.randn(2, 3, 64, 64))
    sum(f.sum() for f in feats.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if norm == "FrozenBN":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_get_norm_rejects_unknown_and_convert_keeps_outputs():
    with pytest.raises(ValueError, match="unknown norm"):
        get_norm("LN", 8)
    bn = get_norm("BN", 8)
    _randomize_batchnorms(bn)
    bn.eval()
    x = torch.randn(2, 8, 4, 4)
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    torch.testing.assert_close(frozen(x), bn(x))


def test_loading_wrong_weights_names_the_keys(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    model = ResNet(18, freeze_at=0)

    del state["layer2.0.conv1.weight"]
    state["layer9.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_torchvision_resnet(model, str(path))
    msg = str(err.value)
    assert "missing keys: layer2.0.conv1.weight" in msg
    assert "unexpected keys: layer9.extra" in msg

    # a ResNet-18 file into a ResNet-34 model: the extra blocks are missing
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"layer1\.2\.conv1\.weight"):
        load_torchvision_resnet(ResNet(34, freeze_at=0), str(path))

    # same keys, wrong shapes: a ResNeXt file into a plain ResNet-50
    torch.save(torchvision.models.resnext50_32x4d().state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches: layer1\.0\.conv1\.weight"):
        load_torchvision_resnet(ResNet(50, freeze_at=0), str(path))


def test_build_backbone_loads_weights(tmp_path):
    tv = torchvision.models.resnet18()
    _randomize_batchnorms(tv)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    model = build_backbone(BackboneConfig(depth=18, norm="FrozenBN", freeze_at=2, weights=str(path), fpn_channels=16))
    torch.testing.assert_close(model.bottom_up.layer1[0].bn1.running_var, tv.layer1[0].bn1.running_var)
    torch.testing.assert_close(model.bottom_up.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_frozen_bn_is_folded_for_inference_but_not_while_its_conv_trains():
    """conv_norm: the same values either way; a trained conv keeps no folded weight copy for
    backward (only x and the weight itself), while inference reuses one cached folded conv."""
    from pointsup.models.norm import conv_norm

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    norm = get_norm("BN", 16)
    _randomize_batchnorms(norm)
    norm = convert_frozen_batchnorm(norm.eval())
    x = torch.randn(2, 8, 6, 6)
    reference = norm(conv(x))

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = conv_norm(conv, norm, x)
    torch.testing.assert_close(y, reference)
    weight_shaped = [t for t in saved if t.shape == conv.weight.shape]
    assert weight_shaped and all(t.data_ptr() == conv.weight.data_ptr() for t in weight_shaped)
    y.sum().backward()
    assert conv.weight.grad is not None and "_folded_frozen_bn" not in conv.__dict__

    with torch.no_grad():
        y = conv_norm(conv, norm, x)
        cached = conv.__dict__["_folded_frozen_bn"][1]
        assert conv_norm(conv, norm, x) is not y and conv.__dict__["_folded_frozen_bn"][1] is cached
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    conv.weight.requires_grad_(False)  # a frozen stage folds even with grad mode on
    conv_norm(conv, norm, x)
    assert conv.__dict__["_folded_frozen_bn"][1] is cached


@pytest.mark.parametrize("kernel_size, stride, groups", [(1, 1, 1), (3, 1, 1), (3, 2, 4), (1, 2, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_runs_float32_cpu_inference_on_onednn_with_f_conv2d_values(kernel_size, stride, groups, channels_last):
    """norm.conv2d = F.conv2d up to float rounding; without autograd, on one thread, a 1x1
    stride-1 conv of a small batch goes to oneDNN, not to PyTorch's im2col kernel; with
    autograd it stays F.conv2d (same values and gradients)."""
    from torch.profiler import profile

    from pointsup.models.norm import conv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups)
    x = torch.randn(2, 8, 9, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def ops_of(fn):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with profile() as prof:
                out = fn()
        finally:
            torch.set_num_threads(threads)
        return out, {event.key for event in prof.key_averages()}

    with torch.no_grad():
        reference = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        y, ops = ops_of(lambda: conv2d(x, conv.weight, conv.bias, conv))
    assert "aten::mkldnn_convolution" in ops and "aten::_slow_conv2d_forward" not in ops
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)

    x.requires_grad_(True)
    y = conv2d(x, conv.weight, conv.bias, conv)
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    weight_grad = conv.weight.grad.clone()
    conv.zero_grad()
    F.conv2d(x_ref, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(weight_grad, conv.weight.grad)


def test_conv2d_takes_strided_views_and_weights():
    """oneDNN is called directly (not through F.conv2d's layout handling): sliced, transposed,
    expanded and channel-strided inputs and a strided weight give F.conv2d's values."""
    from pointsup.models.norm import conv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    base = torch.randn(2, 8, 20, 22)
    inputs = [
        base[:, :, ::2, 1::3],
        base.permute(0, 1, 3, 2),
        torch.randn(2, 16, 9, 9)[:, ::2],
        torch.randn(1, 8, 1, 9).expand(2, 8, 9, 9),
        base.contiguous(memory_format=torch.channels_last)[:, :, 2:11, 3:12],
    ]
    with torch.no_grad():
        for weight in (conv.weight, torch.randn(16, 16, 3, 3)[:, ::2]):
            for x in inputs:
                expected = F.conv2d(x, weight, conv.bias, conv.stride, conv.padding)
                torch.testing.assert_close(conv2d(x, weight, conv.bias, conv), expected, rtol=1e-5, atol=1e-5)


def test_conv2d_leaves_autocast_and_other_dtypes_to_f_conv2d():
    from pointsup.models.norm import conv2d

    conv = nn.Conv2d(4, 4, 1)
    x = torch.randn(1, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv2d(x, conv.weight, conv.bias, conv).dtype == torch.bfloat16  # autocast applied
    x64, conv64 = x.double(), conv.double()
    torch.testing.assert_close(conv2d(x64, conv64.weight, conv64.bias, conv64), conv64(x64))
