"""pointsup: pointly-supervised instance segmentation in plain PyTorch.

Cheng, Parkhi, Kirillov, "Pointly-Supervised Instance Segmentation" (CVPR 2022):
train instance segmentation models from a box plus N labelled points per object.
"""

__version__ = "0.1.0"
