"""Budget targets (`prunebench.budgets`): a study asks every method for the same cost (params,
compression, MACs, measured speed-up) and each method is set to meet it, by exact
translation (masks and parameter counts) or by search on the real pruning."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
import yaml

from prunebench.analysis.aggregate import at_budget, equal_cost_table
from prunebench.analysis.plots import equal_cost_figure
from prunebench.budgets import Budget, ScopeCounts, planned_sparsity, search
from prunebench.cli import main
from prunebench.errors import ConfigError
from prunebench.metrics import count_macs, size_counts
from prunebench.metrics.macs import nonzero_macs
from prunebench.plan import plan
from prunebench.pruning import METHODS, PruneContext, Scope, apply_mask
from prunebench.runs import Arch, seeded
from prunebench.study import parse_study

BASE = {
    "data": {"name": "digits", "val_size": 0.1},
    "model": {"name": "mlp_digits"},
    "train": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "finetune": {"epochs": 1},
    "methods": {"global_magnitude": {}, "neuron_magnitude": {}, "nm": {"n": 2, "m": 4},
                "gradual_magnitude": {}, "lottery": {"prune_fraction": 0.5}},
    "sparsities": [0.5],
    "channel_sparsities": [0.5],
    "seeds": [0],
}


def _study(budgets, **extra):
    return parse_study("tiny", {**copy.deepcopy(BASE), "budgets": budgets, **extra})


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("budgets, key, words", [
    ([{"kind": "flops", "values": [0.5]}], "studies.tiny.budgets[0].kind", "params"),
    ([{"kind": "params", "values": [1.0]}], "studies.tiny.budgets[0].values", "(0, 1)"),
    ([{"kind": "macs", "values": [0]}], "studies.tiny.budgets[0].values", "(0, 1)"),
    ([{"kind": "compression", "values": [1.0]}], "studies.tiny.budgets[0].values", "> 1"),
    ([{"kind": "compression", "values": [math.inf]}], "studies.tiny.budgets[0].values", "> 1"),
    ([{"kind": "compression", "values": []}], "studies.tiny.budgets[0].values", "non-empty"),
    ([{"kind": "params", "values": [0.5], "tolerance": 0}], "studies.tiny.budgets[0].tolerance",
     "(0, 0.5]"),
    ([{"kind": "params", "values": [0.5], "batch_size": 1}],
     "studies.tiny.budgets[0].batch_size", "latency"),
    ([{"kind": "latency", "values": [2.0], "batch_size": 3}],
     "studies.tiny.budgets[0].batch_size", "[1, 128]"),
    ([{"kind": "params", "values": [0.5]}, {"kind": "params", "values": [0.5]}],
     "studies.tiny.budgets", "twice"),
    ([{"kind": "params", "values": [0.5], "typo": 1}], "studies.tiny.budgets[0].typo", "kind"),
    ([{"kind": "latency", "values": [2.0], "batch_size": 128.0}],
     "studies.tiny.budgets[0].batch_size", "[1, 128]"),
    # the same parameters left, asked twice under two names
    ([{"kind": "params", "values": [0.75]}, {"kind": "compression", "values": [4]}],
     "studies.tiny.budgets", "75% params removed and 4x compression"),
    ("params", "studies.tiny.budgets", "list"),
])
def test_a_bad_budget_is_refused_with_its_key(budgets, key, words):
    with pytest.raises(ConfigError) as err:
        _study(budgets)
    assert key in str(err.value) and words in str(err.value)


def test_a_budget_no_method_can_meet_is_refused_naming_each_reason():
    raw = {**copy.deepcopy(BASE), "methods": {"global_magnitude": {}, "nm": {"n": 2, "m": 4}},
           "budgets": [{"kind": "latency", "values": [2.0], "batch_size": 128}]}
    with pytest.raises(ConfigError) as err:
        parse_study("tiny", raw)
    text = str(err.value)
    assert "studies.tiny.budgets" in text and "global_magnitude: a mask leaves" in text
    assert "nm: a mask leaves" in text


def test_a_budget_past_what_the_scope_holds_is_refused_when_planned():
    counts = ScopeCounts(params_total=1000, scope_weights=900)
    assert planned_sparsity(Budget("params", 0.45), counts, "k") == pytest.approx(0.5)
    assert planned_sparsity(Budget("compression", 4.0), counts, "k") == pytest.approx(0.8333333)
    assert planned_sparsity(Budget("macs", 0.5), counts, "k") is None  # searched
    with pytest.raises(ConfigError, match=r"k: 95% params removed needs .* at most 89\.9%"):
        planned_sparsity(Budget("params", 0.95), counts, "k")


def test_tolerance_is_relative_on_the_share_left():
    b = Budget("params", 0.5)  # 50 % left, ±5 % of that: 47.5-52.5 % left
    assert b.met(0.5) and b.met(0.524) and b.met(0.476)
    assert not b.met(0.53) and not b.met(0.47)
    c = Budget("compression", 10.0)  # 10 % left: 9.5-10.5 % left
    assert c.met(1 / 0.104) and not c.met(1 / 0.106)
    lat = Budget("latency", 2.0, batch_size=1, tolerance=0.1)
    assert lat.met(1.81) and not lat.met(1.79)


def test_search_finds_the_closest_step_and_says_when_the_budget_is_out_of_reach():
    steps = lambda x: math.floor(x * 10) / 10  # noqa: E731 (a cost in whole tenths)
    found = search(Budget("params", 0.5), steps, high=0.95)
    assert found.achieved == pytest.approx(0.5) and 0.5 <= found.setting < 0.6 and found.met
    assert [x for x, _ in found.probes][0] == 0.95 and len(found.probes) == 13
    out = search(Budget("params", 0.99), steps, high=0.95)
    assert out.setting == 0.95 and out.achieved == pytest.approx(0.9) and not out.met


# ---------------------------------------------------------------- planning


def _runs(budgets, tmp_path):
    from prunebench.context import StudyContext
    from prunebench.stages import STAGES

    ctx = StudyContext(_study(budgets), tmp_path / "runs")
    return ctx, {name: stage.runs(ctx) for name, stage in STAGES.items()}


def test_each_method_gets_the_budgets_it_can_meet_and_native_runs_keep_their_names(tmp_path):
    _, plain = _runs(None, tmp_path)
    ctx, runs = _runs([{"kind": "params", "values": [0.6]}, {"kind": "macs", "values": [0.4]},
                       {"kind": "latency", "values": [1.5], "batch_size": 128}], tmp_path)
    for stage in plain:  # adding budgets renames nothing that was there
        assert {r.hash for r in plain[stage]} <= {r.hash for r in runs[stage]}
    asked = {(r.label, r.meta["budget_kind"]) for rs in runs.values() for r in rs
             if r.meta.get("budget_kind") and r.meta.get("result")}
    assert asked == {
        ("global_magnitude", "params"), ("global_magnitude", "macs"),
        ("neuron_magnitude", "params"), ("neuron_magnitude", "macs"),
        ("neuron_magnitude", "latency"),
        # during/after training: only the exact parameter budgets
        ("gradual_magnitude", "params"), ("lottery", "params"),
    }  # nm: its options fix its sparsity; masks get no latency budget
    prune = {(r.label, r.meta["budget_kind"]): r for r in runs["prune"]
             if r.meta.get("budget_kind")}
    # A mask's parameter budget is an exact sparsity, known now; the rest are searched.
    gm = prune[("global_magnitude", "params")]
    assert gm.spec.target == pytest.approx(0.6 * ctx.scope_counts.params_total
                                           / ctx.scope_counts.scope_weights)
    assert gm.description["budget"] == {"kind": "params", "value": 0.6}
    assert prune[("global_magnitude", "macs")].spec.target is None
    assert prune[("neuron_magnitude", "params")].spec.target is None
    jobs = {j.point for j in plan({"studies": {"tiny": {**BASE, "budgets": [
        {"kind": "macs", "values": [0.4]}]}}}, "jobs") if j.stage == "prune"}
    assert "seed0-macs0.4" in jobs  # job names say the budget


# ---------------------------------------------------------------- the search, on real pruning


def _trained_cnn():
    torch.manual_seed(0)
    return Arch("cnn_digits_bn", 10, (1, 8, 8)).build().eval()


def test_a_structured_search_meets_a_parameter_and_a_macs_budget_on_the_real_surgery():
    from prunebench.stages.budget_search import cost

    model = _trained_cnn()
    shape = (1, 8, 8)
    dense = {"params_total": size_counts(model)["params_total"], "macs": count_macs(model, shape)}
    method = METHODS.get("l1_filter")
    opts = method.resolve_options({}, "k")
    for budget in (Budget("params", 0.6), Budget("macs", 0.5)):
        def probe(f):
            work = copy.deepcopy(model)
            method(PruneContext(work, Scope(), opts, seeded(0), input_shape=shape), f)
            return cost(budget, work, shape, dense, True)

        found = search(budget, probe, high=0.95)
        assert found.met, (budget, found)
        # The setting found, pruned for real, achieves what the search said.
        work = copy.deepcopy(model)
        method(PruneContext(work, Scope(), opts, seeded(0), input_shape=shape), found.setting)
        assert cost(budget, work, shape, dense, True) == found.achieved
        # and is the smallest step that gets there, or the one just below it
        costs = sorted(found.probes)
        assert all(a[1] <= b[1] for a, b in zip(costs, costs[1:]))  # monotone


def test_a_masks_macs_budget_counts_the_products_with_nonzero_weights():
    from prunebench.stages.budget_search import cost

    model = _trained_cnn()
    shape = (1, 8, 8)
    dense = {"params_total": size_counts(model)["params_total"], "macs": count_macs(model, shape)}
    method = METHODS.get("global_magnitude")
    budget = Budget("macs", 0.5)

    def probe(s):
        work = copy.deepcopy(model)
        apply_mask(work, method(PruneContext(work, Scope(), {}, seeded(0)), s))
        return cost(budget, work, shape, dense, False)

    found = search(budget, probe, high=0.999)
    assert found.met
    work = copy.deepcopy(model)
    apply_mask(work, method(PruneContext(work, Scope(), {}, seeded(0)), found.setting))
    assert count_macs(work, shape) == dense["macs"]  # dense kernels pay every MAC
    assert 1 - nonzero_macs(work, shape) / dense["macs"] == pytest.approx(0.5, rel=0.05)


# ---------------------------------------------------------------- end to end, and the tables


def test_budget_runs_record_what_they_achieved_and_sit_side_by_side(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {"studies": {"tiny": {**copy.deepcopy(BASE),
                                "methods": {"global_magnitude": {}, "neuron_magnitude": {}},
                                "recover": ["finetune"],
                                "budgets": [{"kind": "params", "values": [0.6]},
                                            {"kind": "macs", "values": [0.4]}]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for verb in ("train", "prune", "finetune"):
        assert main([verb, "--no-progress"]) == 0
    recovered = list((tmp_path / "results/runs/recover").glob("*/config.json"))
    seen = {}
    for config_path in recovered:
        config = json.loads(config_path.read_text())
        metrics = json.loads((config_path.parent / "metrics.json").read_text())
        if config.get("budget_kind"):
            seen[(config["label"], config["budget_kind"])] = metrics
    assert set(seen) == {(m, k) for m in ("global_magnitude", "neuron_magnitude")
                         for k in ("params", "macs")}
    for (label, kind), m in seen.items():
        assert m["budget_met"], (label, kind, m["budget_achieved"])
        if kind == "params":  # counted on the pruned model (fine-tuning may zero or revive
            # a bias or two: a few parameters of the 8,000)
            assert m["budget_achieved"] == pytest.approx(m["param_reduction"], abs=2e-4)
    # a channel-pruned model's MACs fall with its budget; a mask's dense-kernel MACs do not
    assert seen[("neuron_magnitude", "macs")]["macs_reduction"] == pytest.approx(0.4, rel=0.05)
    assert seen[("global_magnitude", "macs")]["macs_reduction"] == 0.0


def _summary():
    base = {"study": "s", "dataset": "d", "model": "m", "recovery": "finetune",
            "control": None, "n": 3, "top1_std": 0.01, "top5_mean": 0.99, "top5_std": 0.0,
            "delta_top1_vs_dense": 0.0, "budget_batch_size": math.nan}
    rows = [{**base, "series": "dense", "label": "dense", "method": "dense", "recovery": None,
             "target_sparsity": 0.0, "channel_sparsity": math.nan, "budget_kind": None,
             "budget_value": math.nan, "top1_mean": 0.95, "param_reduction_mean": 0.0,
             "macs_reduction_mean": 0.0}]
    for label, method, structured in (("gm", "global_magnitude", False),
                                      ("l1", "l1_filter", True)):
        for value, top1 in ((0.5, 0.94), (0.75, 0.9)):
            rows.append({**base, "series": label, "label": label, "method": method,
                         "target_sparsity": math.nan, "channel_sparsity": math.nan,
                         "budget_kind": "params", "budget_value": value, "top1_mean": top1,
                         "budget_setting_mean": 0.3 if structured else value,
                         "budget_achieved_mean": value, "budget_met_mean": 2 / 3,
                         "param_reduction_mean": value,
                         "macs_reduction_mean": value if structured else 0.0})
    return pd.DataFrame(rows)


def test_the_equal_cost_table_and_figure_show_each_budget_point_apart_from_the_grid():
    summary = _summary()
    table = equal_cost_table(summary, "s")
    assert table.count("**50% params removed**") == 1 and "**75% params removed**" in table
    gm_row = next(line for line in table.splitlines() if line.startswith("| gm "))
    assert "sparsity 0.500" in gm_row and "2/3" in gm_row and "50.0 % removed" in gm_row
    assert "channels 0.300" in next(line for line in table.splitlines()
                                    if line.startswith("| l1 "))
    # budget rows are kept out of the sparsity tables
    assert len(at_budget(summary, budget=False)) == 1
    fig = equal_cost_figure(summary, "s")
    ax = fig.axes[0]
    lines = {c.get_label(): c for c in ax.containers}
    assert set(lines) == {"gm", "l1"}
    for name, container in lines.items():  # top-1 at both budget values, dodged apart in x
        x, y = container.lines[0].get_data()
        assert list(y) == pytest.approx([94.0, 90.0])
        assert list(x) != [0.5, 0.75] and x[0] == pytest.approx(0.5, abs=0.02)


def test_rewind_and_lottery_take_a_masks_exact_budget_and_name_it(tmp_path):
    from prunebench.context import StudyContext
    from prunebench.stages import STAGES

    study = _study([{"kind": "compression", "values": [4]}], recover=["finetune", "rewind"])
    ctx = StudyContext(study, tmp_path)
    rewind = [r for r in STAGES["rewind"].runs(ctx) if r.spec.budget is not None]
    assert {r.label for r in rewind} == {"global_magnitude", "gradual_magnitude"}
    want = (1 - 1 / 4) * ctx.scope_counts.params_total / ctx.scope_counts.scope_weights
    for run in rewind:
        assert run.spec.target == pytest.approx(want) and run.meta["budget_value"] == 4.0
        assert run.spec.pruned.description["budget"] == {"kind": "compression", "value": 4.0}
    from prunebench.specs import LevelSpec

    budgeted = [r for r in STAGES["lottery"].runs(ctx) if r.spec.budget is not None]
    chains = [r for r in budgeted if isinstance(r.spec, LevelSpec)]
    assert len(chains) == 1 and chains[0].spec.target == pytest.approx(want)
    assert {r.meta["control"] for r in budgeted} == {"ticket", "reinit"}  # and its control
    # its earlier levels are the chain's shared ones, not budget runs
    assert chains[0].spec.previous.spec.budget is None


def test_a_refused_top_setting_steps_down_and_a_refused_inner_one_ends_the_search():
    from prunebench.budgets import Infeasible

    def capped(x):  # a method that refuses settings above 0.9 (a layer cap)
        if x > 0.9:
            raise Infeasible("cap")
        return x

    found = search(Budget("params", 0.6), capped, high=0.999)
    assert found.met and found.setting <= 0.9 and found.probes[0][0] == 0.9
    with pytest.raises(Infeasible):
        search(Budget("params", 0.6), lambda x: (_ for _ in ()).throw(Infeasible("no")), 0.999)


def test_budget_points_have_distinct_job_names_and_stay_out_of_native_stacks(tmp_path):
    from prunebench.context import StudyContext
    from prunebench.stacking import stacks
    from prunebench.stages import STAGES

    both = [{"kind": "latency", "values": [1.5], "batch_size": 1},
            {"kind": "latency", "values": [1.5], "batch_size": 128},
            {"kind": "params", "values": [0.125]}, {"kind": "params", "values": [0.12]}]
    raw = {"studies": {"tiny": {**copy.deepcopy(BASE), "seeds": [0, 1], "budgets": both}}}
    points = [(j.stage, j.label, j.point) for j in plan(raw, "jobs")]
    assert len(points) == len(set(points))
    assert {"seed0-latency1.5b1", "seed0-latency1.5b128", "seed0-params0.125",
            "seed0-params0.12"} <= {p for _, _, p in points}
    # the finetune stacks of the sparsity runs are the same with or without budgets
    stage = STAGES["finetune"]
    plain = StudyContext(_study(None, seeds=[0, 1]), tmp_path)
    budgeted = StudyContext(_study(both, seeds=[0, 1]), tmp_path)
    native = {p: tuple(r.path for r in s) for p, s in stacks(stage, plain, stage.runs(plain)).items()}
    mixed = stacks(stage, budgeted, stage.runs(budgeted))
    assert native and all(tuple(r.path for r in mixed[p]) == s for p, s in native.items())
    assert all(r.spec.budget is not None for s in mixed.values() for r in s
               if s[0].spec.budget is not None)


def test_two_selected_studies_that_make_one_run_are_refused():
    one = copy.deepcopy(BASE)
    raw = {"studies": {"a": one, "b": copy.deepcopy(one)}}
    with pytest.raises(ConfigError, match="studies 'a' and 'b' both make run .*only="):
        plan(raw, "jobs")
    raw["studies"]["b"]["seeds"] = [1]
    assert plan(raw, "jobs")


def test_the_headline_leaves_budget_points_out():
    from prunebench.analysis.aggregate import headline_metrics

    summary = _summary().assign(params_remaining_frac_mean=0.5)
    cells = headline_metrics(summary)["s"]
    assert set(cells) == {"dense"}  # the budget rows have no grid point to stand at
