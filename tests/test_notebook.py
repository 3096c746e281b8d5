"""The results notebook runs end to end on result files made by `recsys evaluate`."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from recsys.cli import main
from recsys.datasets.io import write_prepared
from tests.test_evaluation import prepared, shop_log  # noqa: F401 (fixture)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "results.ipynb"


@pytest.mark.slow
def test_results_notebook_executes(prepared, tmp_path, monkeypatch):  # noqa: F811
    results = tmp_path / "results"
    for model in ("popular", "sknn"):
        out = results / f"tiny_{model}.json"
        args = ["evaluate", "--dataset", str(prepared), "--model", model]
        assert main([*args, "--out", str(out)]) == 0

    events, cut = shop_log()
    shop = tmp_path / "shop"
    write_prepared(shop, dataset="shop", sources=[], events=events, synthetic_ts=False)
    args = ["evaluate", "--dataset", str(shop), "--model", "covisitation"]
    args += ["--protocol", "time", "--cut-ts", str(cut)]
    assert main([*args, "--out", str(results / "shop_covisitation.json")]) == 0

    monkeypatch.setenv("RECSYS_RESULTS_DIR", str(results))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()

    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs)
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert "3 results from" in text
    assert "score@20" in text
    assert "sknn" in text
    assert len(images) == 2
