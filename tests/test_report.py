"""The report: figures measured on the model, renderings, atomic writes."""

import json
import os

import pytest
import torch

import pdprune
from pdprune.io import atomic_write_text
from tests.helpers import config, mlp, train_steps


@pytest.fixture
def finalized_report():
    model = mlp()
    pruner = pdprune.prepare(model, config())
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), 0, 60)
    return model, pruner.finalize()


def test_report_figures_are_measured_on_the_weights(finalized_report):
    model, report = finalized_report
    zeros = sum(int((model.get_parameter(layer.name) == 0).sum()) for layer in report.layers)
    assert report.removed_params == zeros
    assert report.model_params == sum(p.numel() for p in model.parameters())
    assert report.pruned_params == 16 * 64 + 64 * 64 + 64 * 4
    data = report.to_dict()
    assert data["nonzero_pruned_params"] == report.pruned_params - zeros
    assert [layer["shape"] for layer in data["layers"]] == [[64, 16], [64, 64], [4, 64]]


def test_text_table_lists_every_layer_and_totals(finalized_report):
    _, report = finalized_report
    text = report.to_text()
    for layer in report.layers:
        assert layer.name in text
    assert "total (pruned layers)" in text and f"{report.achieved_sparsity:.4f}" in text
    assert "not yet hardened" not in text


def test_save_writes_json_text_and_plot(tmp_path, finalized_report):
    _, report = finalized_report
    written = report.save(tmp_path / "out", plot=True)
    assert sorted(p.name for p in written) == ["report.json", "report.txt", "sparsity.png"]
    assert (
        json.loads((tmp_path / "out" / "report.json").read_text())["achieved_sparsity"]
        == report.achieved_sparsity
    )
    assert (tmp_path / "out" / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".tmp")]


def test_failed_write_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "report.txt"
    atomic_write_text(target, "old content")

    class Boom(Exception):
        pass

    from pdprune.io import atomic_write

    def failing(tmp):
        tmp.write_text("half of the new")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, failing)
    assert target.read_text() == "old content"
    assert os.listdir(tmp_path) == ["report.txt"]


def test_report_before_finalize_previews_hardened_masks():
    model = mlp()
    pruner = pdprune.prepare(model, config())
    report = pruner.report()
    assert not report.finalized and "not yet hardened" in report.to_text()
    assert report.achieved_sparsity == pytest.approx(0.9, abs=1e-3)


def test_written_files_get_normal_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_saving_into_a_file_path_is_a_clear_error(tmp_path, finalized_report):
    _, report = finalized_report
    (tmp_path / "taken").write_text("user data")
    with pytest.raises(NotADirectoryError, match="is a file"):
        report.save(tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "user data"
