import os

import numpy as np
import torch
from PIL import Image

from pointsup.data.visualize import main
from pointsup.utils.visualize import draw_instances, save_visualization


def test_draw_instances_colours_points_and_masks(tmp_path):
    image = np.full((40, 50, 3), 128, dtype=np.uint8)
    masks = torch.zeros(1, 40, 50, dtype=torch.bool)
    masks[0, 5:15, 5:15] = True
    out = draw_instances(
        image, boxes=torch.tensor([[5.0, 5.0, 30.0, 30.0]]), masks=masks,
        point_coords=torch.tensor([[[20.5, 20.5], [35.5, 35.5], [44.5, 8.5]]]), point_labels=torch.tensor([[1.0, 0.0, -1.0]]),
        classes=torch.tensor([0]), scores=torch.tensor([0.9]), class_names=["disc"], scale=2,
    )
    arr = np.asarray(out)
    assert out.size == (100, 80)
    assert tuple(arr[41, 41]) == (230, 25, 25)  # object point: red
    assert tuple(arr[71, 71]) == (30, 80, 255)  # background point: blue
    assert tuple(arr[17, 89]) == (150, 150, 150)  # ignored point: grey
    assert tuple(arr[20, 20]) != (128, 128, 128)  # mask tinted
    path = tmp_path / "v.png"
    save_visualization(str(path), image, boxes=np.array([[1, 1, 10, 10]]))
    assert Image.open(path).size == (50, 40)


def test_cli_renders_json(synthetic_points_json, synthetic_paths, tmp_path, capsys):
    main(["--json", synthetic_points_json, "--images", synthetic_paths["image_dir"], "--out", str(tmp_path), "--num", "2"])
    pngs = sorted(os.listdir(tmp_path))
    assert pngs == ["1.png", "2.png"]
    assert Image.open(tmp_path / "1.png").size == (512, 512)
