"""`python -m pointsup.config`: the resolved config as YAML that loads back to the same config,
every dataclass field listed, and every comment written next to a field in config.py shown."""

import dataclasses
import re
import subprocess
import sys

import yaml

from pointsup import config as config_module
from pointsup.config import Config, config_to_dict, format_config, load_config


def all_fields(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        yield prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from all_fields(value, f"{prefix}{f.name}.")


def test_printed_config_loads_back_to_the_same_config(tmp_path):
    cfg = load_config("configs/coco/implicit_pointrend_R_50_FPN_3x_P10.yaml", ["solver.max_iter=7", "data.num_points=3"])
    text = format_config(cfg)
    assert yaml.safe_load(text) == config_to_dict(cfg)  # floats such as 1e-05 stay floats
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert load_config(str(path)) == cfg


def test_every_field_is_listed_at_its_depth():
    text = format_config(Config())
    keys = []  # dotted keys, rebuilt from the indentation of the printed lines
    stack: list[str] = []
    for line in text.splitlines():
        match = re.match(r"^( *)(\w+):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack = stack[:depth] + [match.group(2)]
            keys.append(".".join(stack))
    assert keys == list(all_fields(Config()))


def test_every_field_comment_of_config_py_is_printed_next_to_its_key():
    text = format_config(Config())
    assert "  depth: 18  # 18, 34, 50, 101\n" in text
    assert "  num_classes: 0  # 0 = take it from the training JSON\n" in text
    assert "  # Point simulation for the built-in data (paper sec. 3.1): P_N with N points per box.\n  num_points: 10\n" in text
    # Every comment inside the config dataclasses (read here by plain text, independently of
    # the tokenize-based parser) appears in the output.
    source = open(config_module.__file__).read()
    dataclass_section = source[source.index("@dataclass\nclass DataConfig"):source.index("\n# ----")]
    comments = [m.group(1).strip() for m in re.finditer(r"#(.*)$", dataclass_section, flags=re.M)]
    assert len(comments) > 50
    printed = [m.group(1).strip() for m in re.finditer(r"#(.*)$", text, flags=re.M)]
    assert [c for c in comments if c not in printed] == []


def test_module_prints_the_resolved_config():
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "pointsup.config",
                          "--set", "solver.max_iter=11"], check=True, capture_output=True, text=True).stdout
    assert out.startswith("# pointsup config: the defaults + --set solver.max_iter=11")
    assert yaml.safe_load(out)["solver"]["max_iter"] == 11
    help_text = subprocess.run([sys.executable, "-m", "pointsup.config", "--help"], check=True, capture_output=True,
                               text=True).stdout
    assert help_text.startswith("usage: python -m pointsup.config") and "(default: [])" in " ".join(help_text.split())
