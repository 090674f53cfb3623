"""Mask R-CNN mask head: the class-specific predictor computed for each RoI's class only."""

from __future__ import annotations

import torch

from pointsup.models.mask_head import MaskRCNNHead


def test_class_logits_equal_the_full_predictor_at_each_rois_class():
    torch.manual_seed(0)
    head = MaskRCNNHead(in_channels=8, num_classes=5, strides={"p2": 4}, conv_dim=8, num_conv=1,
                        in_features=("p2",))
    torch.nn.init.normal_(head.predictor.bias)  # the zero init would hide a missing bias
    x = torch.randn(7, 8, 28, 28)
    classes = torch.tensor([0, 4, 4, 2, 1, 3, 0])
    expected = head.predictor(x)[torch.arange(7), classes]  # (R, 28, 28): all K grids, then pick
    for layout in (torch.contiguous_format, torch.channels_last):
        got = head.class_logits(x.contiguous(memory_format=layout), classes)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert head.class_logits(x[:0], classes[:0]).shape == (0, 28, 28)
    # the gradient reaches only the rows of the classes present, as with the full predictor
    head.class_logits(x, torch.tensor([0, 4, 4, 2, 1, 1, 0])).sum().backward()  # no class 3
    rows_with_grad = head.predictor.weight.grad.flatten(1).abs().sum(1) > 0  # (K,)
    assert rows_with_grad.tolist() == [True, True, True, False, True]
