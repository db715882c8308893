"""The lottery-ticket reproduction's parts: per-layer pruning rates, the paper's levels, the
early-stopping iteration, stacked reinitialisation controls and the two curves' figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from prunebench.analysis.aggregate import lottery_table, study_markdown
from prunebench.analysis.plots import lottery_figure
from prunebench.cli import main
from prunebench.config import read_params
from prunebench.io import load_tensors
from prunebench.plan import plan
from prunebench.pruning import METHODS, PruneContext
from prunebench.pruning.lottery import layer_rates, round_sparsities
from prunebench.pruning.scope import Scope
from prunebench.runs import Arch
from prunebench.training.loop import early_stopping, write_history

PER_LAYER = {"prune_fraction": 0.2, "output_prune_fraction": 0.1}


def test_per_layer_rounds_land_on_the_papers_levels():
    """Frankle & Carbin's LeNet-300-100 levels: 51.3, 21.1, 13.5, 7.0, 3.6, 1.9 % remaining
    after rounds 3, 7, 9, 12, 15, 18 of 20 % per hidden layer and 10 % of the output layer."""
    model = Arch("lenet_300_100", 10, (1, 28, 28)).build()
    levels = round_sparsities(model, Scope(), PER_LAYER, 0.98)
    remaining = {r: round(100 * (1 - levels[r - 1]), 1) for r in (3, 7, 9, 12, 15, 18)}
    assert remaining == {3: 51.3, 7: 21.1, 9: 13.5, 12: 7.0, 15: 3.6, 18: 1.9}
    assert len(levels) == 18  # stops at the first round that reaches the target
    # The study's targets (the levels rounded to 4 digits) each end a chain on its round.
    targets = read_params("params.yaml")["studies"]["mnist_lth"]["sparsities"]
    assert [len(round_sparsities(model, Scope(), PER_LAYER, t)) for t in targets] == [
        3, 7, 9, 12, 15, 18]


def test_a_per_layer_round_prunes_each_layer_at_its_own_compounded_rate():
    torch.manual_seed(0)
    model = Arch("mlp_digits", 10, (1, 8, 8)).build()
    lottery = METHODS.get("lottery")
    opts = lottery.resolve_options(PER_LAYER)
    rates = layer_rates(model, Scope(), opts)
    assert list(rates.values()) == [0.2, 0.2, 0.1]  # the output layer last
    levels = round_sparsities(model, Scope(), opts, 0.6)
    mask = None
    for r, sparsity in enumerate(levels, start=1):
        mask = lottery(PruneContext(model, Scope(), PER_LAYER, mask=mask), sparsity)
        for name, rate in rates.items():
            density = mask[name].float().mean().item()
            assert density == pytest.approx((1 - rate) ** r, abs=2 / mask[name].numel())
        with torch.no_grad():  # the next round ranks the survivors only
            for name, p in Scope().params(model).items():
                p.mul_(mask[name])
        overall = sum((1 - m.float()).sum().item() for m in mask.values()) / sum(
            m.numel() for m in mask.values())
        assert overall == pytest.approx(sparsity, abs=1e-3)


@pytest.mark.parametrize("options, message", [
    ({"output_prune_fraction": 0.0}, "output_prune_fraction must be"),
    ({"output_prune_fraction": 1.0}, "output_prune_fraction must be"),
    ({"output_prune_fraction": 0.1, "criterion": "layer_magnitude"},
     "per-layer rates (output_prune_fraction) prune each layer by magnitude"),
])
def test_bad_per_layer_options_are_refused_at_parse_time(tmp_path, capsys, options, message):
    raw = {"studies": {"s": {"data": {"name": "digits"}, "model": {"name": "mlp_digits"},
                             "methods": {"lottery": options}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(["plan", "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and "studies.s.methods.lottery" in err


def test_early_stopping_is_the_iteration_of_minimum_validation_loss(tmp_path):
    rows = [{"epoch": e, "iteration": 100 * e, "val_loss": loss, "val_top1": top1}
            for e, (loss, top1) in enumerate([(0.5, 0.8), (0.3, 0.9), (0.3, 0.95), (0.4, 0.93)],
                                             start=1)]
    write_history(rows, tmp_path / "history.csv")
    assert early_stopping(tmp_path / "history.csv") == {
        "early_stop_iteration": 200, "early_stop_val_loss": 0.3, "early_stop_val_top1": 0.9}
    assert early_stopping(tmp_path / "missing.csv") == {}
    write_history([{**r, "val_loss": float("nan")} for r in rows], tmp_path / "h2.csv")
    assert early_stopping(tmp_path / "h2.csv") == {}  # no validation split


TINY_LTH = {
    "runs_root": "runs",
    "studies": {"lth": {
        "data": {"name": "digits"}, "model": {"name": "mlp_digits"},
        "train": {"optimizer": "adam", "lr": 0.003, "epochs": 2, "batch_size": 128,
                  "schedule": "constant"},
        "methods": {"lottery": {**PER_LAYER}},
        "sparsities": [0.3536, 0.5811],  # rounds 2 and 4 of this MLP
        "seeds": [0],
    }},
}


def test_a_chains_controls_train_as_one_stack_in_its_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_LTH))
    jobs = [j for j in plan(TINY_LTH, "jobs") if j.stage == "lottery"]
    assert len(jobs) == 1 and jobs[0].manifest not in jobs[0].inputs  # one chain, no cycle
    assert main(["lottery", "--no-progress", "--job", jobs[0].hash]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    tickets = [x for x in lines if x["kind"] == "lottery"]
    controls = [x for x in lines if x["kind"] == "lottery_reinit"]
    assert len(tickets) == len(controls) == 2
    for control, ticket in zip(controls, tickets):
        metrics = json.loads((tmp_path / control["path"] / "metrics.json").read_text())
        assert metrics["stack_members"] == 2 and metrics["early_stop_iteration"] > 0
        # The control trains its ticket's mask: same zeros, other values.
        mask = load_tensors(tmp_path / ticket["path"] / "mask.pt")
        weights = load_tensors(tmp_path / control["path"] / "model.pt")
        for name, keep in mask.items():
            assert torch.all(weights[name][~keep.bool()] == 0)
    # The chains' levels are the rounds that reach each target (2, then 4 rounds).
    levels = [json.loads((tmp_path / t["path"] / "config.json").read_text())["config"]["levels"]
              for t in tickets]
    assert [len(x) for x in levels] == [2, 4] and levels[1][:2] == levels[0]


def _lottery_summary(with_early_stop: bool = True) -> pd.DataFrame:
    rows = [{"study": "s", "series": "dense", "label": "dense", "method": "dense",
             "recovery": None, "control": None, "target_sparsity": 0.0,
             "weight_sparsity_mean": 0.0, "top1_mean": 0.98, "top1_std": 0.001, "n": 3,
             "early_stop_iteration_mean": 9000.0, "early_stop_iteration_std": 500.0}]
    for s, top1, it in [(0.49, 0.985, 6000.0), (0.79, 0.986, 5000.0), (0.98, 0.96, 12000.0)]:
        rows.append({"study": "s", "series": "lottery", "label": "lottery", "method": "lottery",
                     "recovery": None, "control": "ticket",
                     "target_sparsity": s, "weight_sparsity_mean": s, "top1_mean": top1,
                     "top1_std": 0.002, "n": 3, "early_stop_iteration_mean": it,
                     "early_stop_iteration_std": 300.0})
        rows.append({"study": "s", "series": "lottery_reinit", "label": "lottery",
                     "method": "lottery", "recovery": None, "control": "reinit",
                     "target_sparsity": s, "weight_sparsity_mean": s, "top1_mean": top1 - 0.01,
                     "top1_std": 0.003, "n": 3, "early_stop_iteration_mean": it * 1.5,
                     "early_stop_iteration_std": 400.0})
    df = pd.DataFrame(rows)
    return df if with_early_stop else df.drop(columns=["early_stop_iteration_mean",
                                                       "early_stop_iteration_std"])


def test_lottery_figure_draws_tickets_and_controls_from_dense_down_with_bands():
    fig = lottery_figure(_lottery_summary(), "s")
    accuracy, stopping = fig.axes
    for ax in (accuracy, stopping):
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["lottery (ticket)", "lottery (random reinit)"]
        assert ax.xaxis_inverted() and ax.get_xscale() == "log"
        assert len(ax.collections) == 2  # one ±std band per line
        x = ax.get_lines()[0].get_xdata()
        assert np.allclose(x, [100, 51, 21, 2])  # % remaining, dense first
    assert np.allclose(accuracy.get_lines()[0].get_ydata(), [98, 98.5, 98.6, 96])
    assert np.allclose(stopping.get_lines()[1].get_ydata(), [9000, 9000, 7500, 18000])


def test_lottery_figure_without_tickets_is_refused_and_without_early_stops_has_one_panel():
    from prunebench.errors import ConfigError

    summary = _lottery_summary()
    with pytest.raises(ConfigError, match="lottery_tickets needs lottery-ticket runs"):
        lottery_figure(summary[summary["method"] == "dense"], "s")
    # Runs made before the early-stopping iteration was recorded: accuracy only, no empty
    # panel beside it.
    fig = lottery_figure(_lottery_summary(with_early_stop=False), "s")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 2
    assert not fig.axes[0].texts


def _table_rows(table: str) -> tuple[list[str], list[list[str]]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("|")]
    return rows[0], rows[2:]


def test_lottery_table_puts_each_level_beside_its_control_and_dense():
    header, body = _table_rows(lottery_table(_lottery_summary(), "s"))
    assert header[:4] == ["Method", "Weights remaining (%)", "Ticket top-1 (%)",
                          "Control top-1 (%)"]
    assert [r[1] for r in body] == ["100.0", "51.0", "21.0", "2.0"]
    dense, *levels = [dict(zip(header, r)) for r in body]
    assert dense["Method"] == "dense" and dense["Control top-1 (%)"] == "–"
    assert dense["Ticket early stop (iter.)"] == "9,000 ± 500"
    assert levels[1]["Ticket top-1 (%)"] == "98.60 ± 0.20"
    assert levels[1]["Control top-1 (%)"] == "97.60 ± 0.30"
    assert levels[1]["Ticket − dense (pp)"] == "+0.60"
    assert levels[2]["Control − dense (pp)"] == "-3.00"
    assert levels[2]["Control early stop (iter.)"] == "18,000 ± 400"
    # In the report's tables only where the study has lottery runs.
    summary = _lottery_summary().assign(channel_sparsity=np.nan, top5_mean=0.999,
                                        top5_std=0.0, delta_top1_vs_dense=0.0)
    assert "### Lottery tickets vs. random reinitialisation\n" in study_markdown(summary, "s")
    assert lottery_table(summary[summary["method"] == "dense"], "s") is None
    header, body = _table_rows(lottery_table(_lottery_summary(with_early_stop=False), "s"))
    assert {r[header.index("Ticket early stop (iter.)")] for r in body} == {"–"}
