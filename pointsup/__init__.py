"""pointsup: pointly-supervised instance segmentation in plain PyTorch.

Cheng, Parkhi, Kirillov, "Pointly-Supervised Instance Segmentation" (CVPR 2022):
train instance segmentation models from a box plus N labelled points per object.

The Python API, for notebooks and scripts:

    import pointsup
    cfg = pointsup.load_config(None, ["solver.max_iter=200", "output_dir=runs/quick"])
    metrics = pointsup.train(cfg)                           # = pointsup.train.main(cfg)
    metrics = pointsup.evaluate("runs/quick/model_final.pth")
    prediction = pointsup.Predictor("runs/quick/model_final.pth")("photo.jpg")
    prediction.draw()                                       # a PIL image

`pointsup.train` and `pointsup.evaluate` are the modules that `python -m pointsup.train` /
`python -m pointsup.evaluate` run, made callable (pointsup/utils/callable_module.py says
why a plain function cannot share the name of a submodule). Every name here is imported on
first use (PEP 562 `__getattr__`): `import pointsup` stays cheap, and `python -m
pointsup.<module>` does not find its own module imported already by the package (runpy
warns about that, and the module would then exist twice).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> (module, attribute of it, or None for the module itself).
_API = {
    "load_config": ("pointsup.config", "load_config"),
    "Config": ("pointsup.config", "Config"),
    "train": ("pointsup.train", None),  # callable: pointsup.train(cfg) = pointsup.train.main(cfg)
    "evaluate": ("pointsup.evaluate", None),  # callable: pointsup.evaluate(weights) = pointsup.evaluate.evaluate(...)
    "Predictor": ("pointsup.predictor", "Predictor"),
    "Prediction": ("pointsup.predictor", "Prediction"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'pointsup' has no attribute {name!r}")
    module_name, attribute = _API[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
