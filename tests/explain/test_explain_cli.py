"""`bigmodels explain`: every method on an image file, the PNGs, summary.json and the report it writes."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from bigmodels.cli import main


def test_explain_command_writes_heatmaps_and_a_report(tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8), mode="L").save(image)
    out = tmp_path / "out"
    code = main(["explain", "cnn_small", str(image), "--method", "all", "--out", str(out), "--steps", "8",
                 "--samples", "16", "--faithfulness"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    methods = [r["method"] for r in summary if "method" in r]
    assert methods == ["saliency", "ig", "gradcam", "occlusion", "lime", "shap"]
    assert all((out / r["png"]).stat().st_size > 0 for r in summary if "png" in r)
    assert {r["method"] for r in summary[-1]["faithfulness"]} == set(methods)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "http" not in page
    assert "report:" in capsys.readouterr().out


def test_explain_command_refuses_a_method_that_does_not_apply(tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(image)
    code = main(["explain", "mlp_small", str(image), "--method", "gradcam", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "does not apply" in capsys.readouterr().err
