"""Every notebook in notebooks/ runs top to bottom against a checkpoint trained here for a few steps.

Each notebook is executed as JupyterLab would run it: the percent script read by jupytext, one kernel,
every cell in order, outputs kept. Its `parameters` cell is followed by one that points `WORKDIR` at
the checkpoint trained in this module (and shrinks the sweeps), as papermill injects parameters.
A notebook that raises fails its test, and so does one whose figures are missing. The `.ipynb` of
each pair must match its script (jupytext keeps them in step; a stale one is what `jupyter lab`
would open).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interaction_jax import config as config_lib
from interaction_jax.train import loop
from tests.test_train import SMALL

pytestmark = pytest.mark.slow  # a training run, then one kernel per notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))
STEPS = 2
# The notebooks' parameters for CI: a model of two layers (so "per layer" has more than one), and
# sweeps of two settings at one seed.
SMALLER = {"SEEDS": (0,), "TEMPERATURES": (0.0, 1.0), "THRESHOLDS": (0.3, 0.7)}


def _require(module: str):
    """The notebook tools: skipped on a machine without the `notebooks` extra, required on CI."""
    if os.environ.get("CI"):
        return __import__(module)
    return pytest.importorskip(module, reason='the notebooks extra: pip install -e ".[notebooks]"')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("notebooks") / "run"
    sets = [*SMALL, "model.n_layers=2", f"train.steps={STEPS}", "train.eval_every=0"]
    loop.train(config_lib.validate(config_lib.override(config_lib.preset("tiny"), sets)), workdir, progress=False)
    return workdir


def _parameterised(path: Path, parameters: dict):
    """The notebook of `path` with a cell setting `parameters` right after its `parameters` cell."""
    jupytext = _require("jupytext")
    nbformat = _require("nbformat")
    notebook = jupytext.read(path)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: one cell tagged 'parameters' sets what a user changes"
    names = {name for name in parameters if f"\n{name} =" in "\n" + notebook.cells[tagged[0]].source}
    source = "\n".join(f"{name} = {parameters[name]!r}" for name in sorted(names))
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, workdir, tmp_path):
    nbclient = _require("nbclient")
    notebook = _parameterised(path, {"WORKDIR": str(workdir), **SMALLER})
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell and the error, if any cell raises
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"


def test_each_notebook_has_its_ipynb_in_step():
    jupytext = _require("jupytext")
    assert len(NOTEBOOKS) >= 4
    for path in NOTEBOOKS:
        paired = path.with_suffix(".ipynb")
        assert paired.exists(), f"{paired.name} is missing: jupytext --sync {path}"
        script, notebook = jupytext.read(path), jupytext.read(paired)
        assert [(c.cell_type, c.source) for c in script.cells] == [(c.cell_type, c.source) for c in notebook.cells], (
            f"{paired.name} differs from {path.name}: jupytext --sync {path}"
        )
        assert not any(c.get("outputs") for c in notebook.cells), f"{paired.name} holds outputs: save it cleared"


def test_a_notebook_that_raises_fails(tmp_path):
    """The control: the runner above fails on a cell that raises, naming the error."""
    nbclient, nbformat = _require("nbclient"), _require("nbformat")
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('a broken cell')")]
    )
    client = nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="a broken cell"):
        client.execute()
