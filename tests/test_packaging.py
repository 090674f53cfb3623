"""Packaging (issue 13): the console scripts exist in the installed metadata and in a built
wheel, with py.typed; pyproject's ranges admit the tested versions pinned in constraints.txt;
CI and the README install the same way."""

import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"pointsup-train", "pointsup-predict", "pointsup-evaluate", "pointsup-annotate", "pointsup-experiments",
           "pointsup-simulate-points", "pointsup-config", "pointsup-self-training"}


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_console_scripts_are_installed_and_load():
    scripts = {ep.name: ep for ep in md.distribution("pointsup").entry_points if ep.group == "console_scripts"}
    assert SCRIPTS <= set(scripts), "reinstall (pip install -e .) after changing [project.scripts]"
    for name, entry_point in scripts.items():
        assert callable(entry_point.load()), name
    out = subprocess.run(["pointsup-config", "--set", "seed=5"], check=True, capture_output=True, text=True).stdout
    assert "\nseed: 5\n" in out


def test_console_script_wrappers_do_not_exit_with_the_result(monkeypatch):
    """sys.exit(<a dict>) would exit with status 1: the wrappers must return None."""
    from pointsup import console_scripts, train

    monkeypatch.setattr(train, "cli", lambda: {"bbox": {"AP": 1.0}})
    assert console_scripts.train() is None


@pytest.mark.slow
def test_wheel_has_the_scripts_and_py_typed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path), ROOT], check=True)
    (wheel,) = [n for n in os.listdir(tmp_path) if n.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as z:
        names = z.namelist()
        assert "pointsup/py.typed" in names and "pointsup/annotate/static/index.html" in names
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert SCRIPTS <= set(re.findall(r"^([\w-]+) =", entry_points, flags=re.M))


def test_ranges_admit_the_pinned_tested_versions():
    pins = dict(line.split("==") for line in read("constraints.txt").splitlines() if line and not line.startswith("#"))
    pyproject = tomllib.loads(read("pyproject.toml"))["project"]
    requirements = [Requirement(r) for r in pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]]
    for req in requirements:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req} does not admit the tested {name}=={pins[name]}"
        assert not any(spec.operator == "==" for spec in req.specifier), f"{req}: a range, not a pin"
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")  # the tested pair


def test_ci_and_readme_install_the_same_way():
    (ci_install,) = [line for line in read(".ci/run").splitlines() if line.startswith("pip install")]
    assert "-c constraints.txt" in ci_install
    assert f"```bash\n{ci_install}\n```" in read("README.md")
