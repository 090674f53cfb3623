"""The README's commands work verbatim (at tiny scale) and never modify what a run wrote.

The commands are read from README.md and run as written, in a temporary working directory,
with the few substitutions that make them tiny: the default job and the full-mask baseline
get the tiny overrides of test_main_job; the evaluate / predict / self-training block runs
on that tiny job (its data folder's name for the default one, a real folder for the
`img_or_dir` placeholder); the Data block generates 4 images instead of 2000.
(Not run here: the COCO and torchrun commands, which need COCO and GPUs, and the
annotation tool's commands, tested in tests/annotate.)
"""

import importlib
import json
import os
import re
import shlex

import pytest

from pointsup import train

from .test_main_job import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_commands(first_command: str) -> list[str]:
    """The lines of the README's ```bash block that contains `first_command`, with
    backslash continuations joined."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if first_command in b]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def run_shell_line(line: str, variables: dict[str, str], substitutions: dict[str, str]):
    """`VAR=value` sets a variable; `python -m pointsup.X args` calls that module's cli(args)."""
    for old, new in substitutions.items():
        line = line.replace(old, new)
    tokens = shlex.split(line, comments=True)
    if not tokens:
        return None
    tokens = [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], t) for t in tokens]
    if len(tokens) == 1 and re.match(r"^\w+=", tokens[0]):
        name, value = tokens[0].split("=", 1)
        variables[name] = value
        return None
    assert tokens[:2] == ["python", "-m"], line
    module = importlib.import_module(tokens[2])
    entry = getattr(module, "cli", None) or module.main  # the data tools name it main
    return entry(tokens[3:])


def file_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n))}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_readme_evaluate_predict_self_training_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert "```bash\npython -m pointsup.train\n```" in readme
    # the README names the default job's data folder: it must be the one the defaults create
    from pointsup.config import load_config
    from pointsup.data.builtin import synthetic_folder_name

    data = load_config().data
    assert f"D={data.synthetic_dir}/{synthetic_folder_name(data)} " in readme
    train.cli(["--set", *TINY])  # `python -m pointsup.train` at tiny scale: output/ and .cache/
    run_files = file_bytes("output")
    (tiny_data,) = os.listdir(".cache/pointsup/synthetic")

    substitutions = {"train600_val100_size128": tiny_data,
                     "img_or_dir": f".cache/pointsup/synthetic/{tiny_data}/images"}
    lines = readme_commands("python -m pointsup.evaluate")
    assert any("pointsup.self_training" in line for line in lines)
    assert any("pointsup.train" in line for line in lines)
    variables: dict[str, str] = {}
    for line in lines:
        run_shell_line(line, variables, substitutions)

    # nothing of the training run was modified (evaluate writes its own file)
    assert file_bytes("output").items() >= run_files.items()
    with open("output/eval_model_final.json") as f:
        assert "segm" in json.load(f)
    # predict: one drawing per image (extension kept) and the COCO results
    images = os.listdir(substitutions["img_or_dir"])
    assert sorted(os.listdir("preds")) == sorted([n + ".png" for n in images] + ["predictions.json"])
    # self-training: pseudo masks, then a full retraining in its own folder
    with open("output/pseudo.json") as f:
        assert all("segmentation" in a for a in json.load(f)["annotations"] if not a.get("iscrowd"))
    assert os.path.exists("output/self_training/model_final.pth")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_readme_full_mask_baseline_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(os.path.join(REPO, "README.md")) as f:
        (command,) = re.findall(r"`(python -m pointsup.train --set model.mask_head.supervision=masks [^`]*)`", f.read())
    tokens = shlex.split(command)
    train.cli(tokens[3:] + ["--set", *TINY])
    assert os.path.exists("output/masks/model_final.pth")


def test_readme_data_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    variables: dict[str, str] = {}
    for line in readme_commands("python -m pointsup.data.synthetic"):
        run_shell_line(line, variables, {"--num-train 2000": "--num-train 4", "--num-val 200": "--num-val 2"})
    for name in ("train_p10.json", "train_p10_noisy.json", "train_p10_masks.json"):
        with open(os.path.join("data/synth", name)) as f:
            assert all(len(a["point_coords"]) == 10 for a in json.load(f)["annotations"] if not a.get("iscrowd"))
    assert len([n for n in os.listdir("vis") if n.endswith(".png")]) == 4
