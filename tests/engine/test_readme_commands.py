"""The README's commands work verbatim (at tiny scale) and never modify what a run wrote.

The default job is trained with the tiny overrides of test_main_job; then every command of
the README's evaluate / predict / self-training block is read from README.md and run as
written, in a temporary working directory. The only substitutions are the tiny data set's
folder name for the default one and a real folder for the `img_or_dir` placeholder.
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
    tokens = shlex.split(line, comments=True)
    if not tokens:
        return None
    expand = lambda token: re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], token)  # noqa: E731
    tokens = [expand(t) for t in tokens]
    for old, new in substitutions.items():
        tokens = [t.replace(old, new) for t in tokens]
    if len(tokens) == 1 and re.match(r"^\w+=", tokens[0]):
        name, value = tokens[0].split("=", 1)
        variables[name] = value
        return None
    assert tokens[:2] == ["python", "-m"], line
    return importlib.import_module(tokens[2]).cli(tokens[3:])


def file_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n))}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_readme_evaluate_predict_self_training_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
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
