"""`python -m pointsup.data.visualize`: draw the first images of a COCO JSON with their boxes,
masks and labelled points (what a data set holds, before any training). The drawing itself is
`pointsup.utils.visualize.draw_instances`."""

from __future__ import annotations

import argparse
import os

from pointsup.data.coco import CocoInstanceDataset
from pointsup.utils.visualize import save_visualization


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pointsup.data.visualize",
                                     description="Render the first images of a COCO JSON with boxes, masks and points.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--json", required=True, default=argparse.SUPPRESS, help="COCO instances JSON (masks and/or points)")
    parser.add_argument("--images", required=True, default=argparse.SUPPRESS, help="image folder")
    parser.add_argument("--out", required=True, default=argparse.SUPPRESS, help="output folder for PNGs")
    parser.add_argument("--num", type=int, default=4, help="number of images")
    parser.add_argument("--scale", type=float, default=0, help="output scale (0 = enlarge small images to ~512 px)")
    args = parser.parse_args(argv)

    dataset = CocoInstanceDataset(args.json, args.images)
    for i in range(min(args.num, len(dataset))):
        sample = dataset[i]
        image = sample.image.permute(1, 2, 0).round().byte().numpy()  # (H, W, 3)
        scale = args.scale or max(1.0, 512 / max(image.shape[:2]))
        t = sample.targets
        path = os.path.join(args.out, f"{sample.image_id}.png")
        save_visualization(
            path, image, boxes=t.boxes, masks=t.masks, point_coords=t.point_coords,
            point_labels=t.point_labels, classes=t.classes, class_names=dataset.class_names, scale=scale,
        )
        print(path)


if __name__ == "__main__":
    main()
