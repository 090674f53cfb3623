import torch

from pointsup.data.coco import Sample
from pointsup.data.collate import collate
from pointsup.structures import InstanceTargets


def test_collate_pads_to_32_and_keeps_targets():
    a = Sample(torch.rand(3, 50, 70) * 255, InstanceTargets.empty((50, 70), with_masks=True), 7, (100, 140))
    t = InstanceTargets(torch.tensor([[1.0, 2.0, 5.0, 6.0]]), torch.tensor([2]), (33, 20),
                        point_coords=torch.rand(1, 4, 2), point_labels=torch.ones(1, 4))
    b = Sample(torch.rand(3, 33, 20) * 255 + 1, t, 9, (33, 20))
    batch = collate([a, b])
    assert batch.images.shape == (2, 3, 64, 96)
    assert batch.image_sizes == [(50, 70), (33, 20)]
    assert batch.image_ids == [7, 9] and batch.orig_sizes == [(100, 140), (33, 20)]
    assert batch.targets[0] is a.targets and batch.targets[1] is b.targets
    assert torch.equal(batch.images[1, :, :33, :20], b.image)
    assert batch.images[1, :, 33:].abs().sum() == 0 and batch.images[1, :, :, 20:].abs().sum() == 0
    assert collate([b], size_divisibility=1).images.shape == (1, 3, 33, 20)
    assert collate([a], size_divisibility=64).images.shape == (1, 3, 64, 128)


def test_pin_memory_pins_images_and_every_target_tensor(monkeypatch):
    """DataLoader(pin_memory=True) calls ImageBatch.pin_memory: the targets must be page-locked
    too, or their non_blocking copies to the GPU are synchronous. (No GPU here: the pinning
    itself is replaced by a marker.)"""
    pinned = []

    def fake_pin(t):
        out = t.clone()
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    t = InstanceTargets(torch.tensor([[1.0, 2.0, 5.0, 6.0]]), torch.tensor([2]), (33, 20),
                        masks=torch.zeros(1, 33, 20, dtype=torch.bool),
                        point_coords=torch.rand(1, 4, 2), point_labels=torch.ones(1, 4))
    batch = collate([Sample(torch.rand(3, 33, 20), t, 1, (33, 20)),
                     Sample(torch.rand(3, 40, 20), InstanceTargets.empty((40, 20)), 2, (40, 20))]).pin_memory()
    moved = batch.targets[0]
    tensors = [batch.images, moved.boxes, moved.classes, moved.masks, moved.point_coords, moved.point_labels,
               batch.targets[1].boxes, batch.targets[1].classes]
    assert all(any(x is p for p in pinned) for x in tensors)
    assert batch.targets[1].masks is None and batch.targets[1].point_coords is None
    assert torch.equal(moved.point_coords, t.point_coords) and moved.image_size == (33, 20)
