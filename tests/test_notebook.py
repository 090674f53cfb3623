"""examples/quickstart.ipynb runs end to end (issue 13): executed with nbclient in a fresh
folder at its tiny CI scale, every cell without error, the point drawing, the curves and the
prediction shown inline as images, and the notebook stored without outputs."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("POINTSUP_QUICKSTART_TINY", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell on any error

    images_by_cell = [sum("image/png" in o.get("data", {}) for o in c.outputs)
                      for c in nb.cells if c.cell_type == "code"]
    # cells: parameters, data paths, point drawing, train, curves, evaluate, predict
    assert images_by_cell[2] == 1 and images_by_cell[4] == 1 and images_by_cell[6] == 1, images_by_cell
    assert (tmp_path / "runs" / "quickstart" / "model_final.pth").is_file()
    assert (tmp_path / "runs" / "quickstart" / "eval_model_final.json").is_file()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "mask AP" in printed and "detections:" in printed
