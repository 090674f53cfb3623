"""A module that is also a function: `pointsup.train(cfg)` and `python -m pointsup.train`.

`pointsup.train` has to be two things at once: the module that `python -m pointsup.train`
runs (and that `from pointsup import train; train.main(cfg)` reaches), and the training
function of the Python API, `pointsup.train(cfg)`. A plain function named `train` in
`pointsup/__init__.py` cannot work: the moment anything imports the submodule
`pointsup.train`, Python's import system sets the package attribute `pointsup.train` to
the module, replacing the function. So the module itself is made callable instead:
whichever way it is reached it is the same object, it keeps all its attributes, and
calling it calls one named function of it.

This is done by giving the module object a subclass of `types.ModuleType` with
`__call__` (assigning a module's `__class__` is supported since Python 3.5, PEP 549's
alternative); `make_callable` is the one place that does it.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class CallableModule(types.ModuleType):
    """A module whose call runs its function named by `__call_target__`."""

    __call_target__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__call_target__)(*args, **kwargs)


def make_callable(module_name: str, function_name: str) -> None:
    """Make `sys.modules[module_name](...)` call `sys.modules[module_name].<function_name>(...)`.
    Call it at the end of the module, with `__name__` (also right when run as `__main__`)."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__call_target__ = function_name
