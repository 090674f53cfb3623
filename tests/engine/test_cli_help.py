"""Every command's --help names its module invocation (`python -m pointsup.X`) and gives each
argument a help text and its default (a required argument has none to give)."""

import importlib
import importlib.util
import re

import pytest

# module, its entry function, its required options
COMMANDS = [
    ("pointsup.train", "cli", set()),
    ("pointsup.predict", "cli", {"--weights", "--input", "--output"}),
    ("pointsup.evaluate", "cli", {"--weights"}),
    ("pointsup.config", "main", set()),
    ("pointsup.self_training", "cli", {"--weights", "--output"}),
    ("pointsup.annotation_time", "main", set()),
    ("pointsup.data.visualize", "main", {"--json", "--images", "--out"}),
    ("pointsup.experiments", "main", set()),
    ("pointsup.export", "cli", {"--weights", "--output"}),
    ("pointsup.annotate.__main__", "main", {"--input", "--images", "--output"}),
    ("pointsup.annotate.summary", "main", set()),
    ("pointsup.data.synthetic", "main", {"--out"}),
    ("pointsup.data.simulate_points", "main", {"--input", "--output"}),
]


def help_entries(text: str) -> dict[str, str]:
    """{option: its help text, whitespace normalised} from argparse's "options:" section."""
    section = text.split("\noptions:\n", 1)[1]
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=  -)", "\n" + section):
        block = " ".join(block.split())
        if block.startswith("-"):
            entries[block.split()[0].rstrip(",")] = block
    return entries


@pytest.mark.parametrize("module_name, function, required", COMMANDS)
def test_help_names_the_module_and_every_default(module_name, function, required, capsys):
    entry = getattr(importlib.import_module(module_name), function)
    with pytest.raises(SystemExit) as info:
        entry(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m {module_name.removesuffix('.__main__')} ")
    entries = help_entries(text)
    assert required <= set(entries)
    for option, block in entries.items():
        if option == "-h":
            continue
        words = block.split()
        help_text = " ".join(words[1:]) if len(words) > 1 else ""
        assert help_text and not re.fullmatch(r"[A-Z_ .\[\]=]+", help_text), f"{module_name} {option} has no help"
        if option not in required:
            assert "(default:" in block, f"{module_name} {option} does not show its default: {block}"
        else:
            assert "(default:" not in block, f"{module_name} {option} is required but shows a default"


@pytest.mark.parametrize("module_name", [m for m, _, _ in COMMANDS])
def test_main_guard_is_the_last_statement(module_name):
    """`python -m` runs a module top to bottom: anything defined after its
    `if __name__ == "__main__":` block does not exist yet when the command runs (an import
    sees it, so in-process tests do not notice)."""
    import ast

    path = importlib.util.find_spec(module_name).origin
    body = ast.parse(open(path).read()).body
    guards = [i for i, node in enumerate(body) if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert guards, f"{module_name}: no main guard"
    assert guards[-1] == len(body) - 1, f"{path}: statements after the main guard (line {body[guards[-1]].lineno})"
