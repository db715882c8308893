"""Rewinding as a recovery (`recover: [rewind]`): which runs it plans, that it is a one-round
lottery chain bit for bit, that late rewinding starts from the dense run's iteration k, that
bad options are refused at parse time, that its runs stack, and how the analysis shows them."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from prunebench.analysis.aggregate import collect_runs, lottery_table, summarise
from prunebench.analysis.plots import lottery_figure
from prunebench.cli import main
from prunebench.config import DataConfig
from prunebench.context import StudyContext
from prunebench.executor import Executor, load_data
from prunebench.io import load_tensors
from prunebench.plan import plan
from prunebench.stacking import stacks
from prunebench.stages import STAGES
from prunebench.stages.base import dense_run
from prunebench.stages.prune import prune_run
from prunebench.stages.train import during_training_run
from prunebench.study import json_schema, load_study
from prunebench.training import train

TRAIN = {"optimizer": "adam", "lr": 0.003, "epochs": 2, "batch_size": 128}
STUDY = {
    "data": {"name": "digits"},
    "model": {"name": "mlp_digits"},
    "train": TRAIN,
    "finetune": {"epochs": 1},
    "methods": {
        "global_magnitude": {},        # trained weights, unstructured: rewound
        "nm_2_4": {"method": "nm"},    # trained weights, its own sparsity (0.5): rewound
        "gradual_magnitude": {},       # prunes during training: its final mask rewound
        "snip": {},                    # at initialisation: its finetune already is a rewind
        "neuron_magnitude": {},        # structured: no initial weights of its network
        "lottery": {"prune_fraction": 0.5},  # rewinds at every level already
    },
    "sparsities": [0.5, 0.8],
    "channel_sparsities": [0.5],
    "recover": ["finetune", "rewind"],
    "seeds": [0, 1],
}
REWOUND = {"global_magnitude", "nm_2_4", "gradual_magnitude"}


def params(study: dict | None = None, **changes) -> dict:
    study = copy.deepcopy(STUDY if study is None else study)
    study.update(copy.deepcopy(changes))
    return {"runs_root": "runs", "studies": {"s": study}}


def write(directory: Path, raw: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def context(tmp_path: Path, raw: dict) -> StudyContext:
    return StudyContext(load_study(write(tmp_path, raw), "s"), tmp_path / "runs")


def _weights(path: Path) -> dict:
    return load_tensors(path / "model.pt")


# ---------------------------------------------------------------- (a) planning


def test_rewind_runs_are_planned_for_trained_and_during_training_unstructured_methods(
        tmp_path):
    ctx = context(tmp_path, params())
    study = ctx.study
    runs = STAGES["rewind"].runs(ctx)
    assert {r.label for r in runs} == REWOUND  # none for SNIP, channel pruning or lottery
    expected = {"global_magnitude": [0.5, 0.8], "nm_2_4": [0.5], "gradual_magnitude": [0.5, 0.8]}
    prune_paths = {r.path for r in STAGES["prune"].runs(ctx)}
    train_paths = {r.path for r in STAGES["train"].runs(ctx)}
    for label, wanted in expected.items():
        mine = [r for r in runs if r.label == label]
        assert sorted((r.spec.seed, r.spec.target) for r in mine) == [
            (seed, t) for seed in (0, 1) for t in wanted]  # every seed x target, once
        entry = study.method(label)
        for run in mine:
            seed, target = run.spec.seed, run.spec.target
            if label == "gradual_magnitude":  # the run that pruned during training
                parent = during_training_run(ctx, entry, target, seed)
                assert parent.path in train_paths and parent.stage == "train"
            else:  # the one-shot pruning run
                parent = prune_run(ctx, entry, target, seed)
                assert parent.path in prune_paths and parent.stage == "prune"
            assert run.spec.pruned.path == parent.path
            assert run.spec.dense.path == dense_run(ctx, seed).path
            assert [p.path for p in run.parents] == [parent.path, dense_run(ctx, seed).path]
            # Named like a fine-tuning run: parent, recovery and the full train recipe.
            assert run.description == {"parent": parent.description, "recovery": "rewind",
                                       "train": study.train}
            assert (run.kind, run.stage) == ("recover", "rewind")
            assert (run.meta["recovery"], run.meta["control"]) == ("rewind", "ticket")
            assert run.meta["result"] is True
    # No controls unless asked for.
    assert {r.meta["control"] for r in runs} == {"ticket"}


def test_controls_only_with_reinit_control_and_the_iteration_renames_only_tickets(tmp_path):
    plain = STAGES["rewind"].runs(context(tmp_path / "a", params()))
    both = STAGES["rewind"].runs(context(tmp_path / "b", params(rewind={"reinit_control": True})))
    tickets = [r for r in both if r.meta["control"] == "ticket"]
    controls = [r for r in both if r.meta["control"] == "reinit"]
    # Asking for controls adds one per rewind run and renames none.
    assert [r.path.name for r in tickets] == [r.path.name for r in plain]
    assert len(controls) == len(tickets)
    for ticket, control in zip(tickets, controls):
        assert control.spec.pruned.path == ticket.spec.pruned.path  # the same mask
        assert [p.path for p in control.parents] == [ticket.spec.pruned.path]
        assert control.path != ticket.path
        assert (control.meta["recovery"], control.label) == ("rewind", ticket.label)

    late = STAGES["rewind"].runs(context(tmp_path / "c", params(
        rewind={"iteration": 7, "reinit_control": True})))
    late_tickets = [r for r in late if r.meta["control"] == "ticket"]
    assert all(r.description["iteration"] == 7 and r.spec.iteration == 7
               for r in late_tickets)
    assert not {r.path.name for r in late_tickets} & {r.path.name for r in tickets}
    # A control trains a fresh initialisation from iteration 0: the iteration is no part
    # of it.
    assert [r.path.name for r in late if r.meta["control"] == "reinit"] == [
        r.path.name for r in controls]


def test_adding_rewind_renames_no_other_run_and_the_plan_has_its_jobs(tmp_path):
    before = plan(params(recover=["finetune"]), tmp_path / "jobs")
    after = plan(params(rewind={"reinit_control": True}), tmp_path / "jobs")
    old = {(j.stage, j.manifest, j.runs) for j in before}
    new = {(j.stage, j.manifest, j.runs) for j in after}
    assert old <= new  # every job and run of before keeps its name
    added = [j for j in after if (j.stage, j.manifest, j.runs) not in old]
    assert {j.stage for j in added} == {"rewind", "benchmark"}
    points = {(j.label, j.point) for j in added if j.stage == "rewind"}
    assert ("global_magnitude", "global_magnitude+rewind-seed0-s0.5") in points
    assert ("global_magnitude", "global_magnitude+rewind_reinit-seed1-s0.8") in points
    assert ("gradual_magnitude", "gradual_magnitude+rewind-seed1-s0.8") in points
    assert len(points) == 2 * 2 * 5  # (tickets + controls) x seeds x grid points
    # Every rewind run is benchmarked.
    measured = [j for j in added if j.stage == "benchmark"]
    assert len(measured) == len(points)


def test_tickets_stack_per_method_and_controls_apart_and_late_rewinding_trains_alone(tmp_path):
    ctx = context(tmp_path / "a", params(rewind={"reinit_control": True}))
    stage = STAGES["rewind"]
    stacked = stacks(stage, ctx, stage.runs(ctx))
    groups = {tuple(r.path for r in s): s for s in stacked.values()}
    for members in groups.values():
        assert len({r.label for r in members}) == 1
        assert len({r.meta["control"] for r in members}) == 1  # never a ticket with a control
        assert [r.spec.seed for r in members] == sorted(r.spec.seed for r in members)
    sizes = sorted((s[0].label, s[0].meta["control"], len(s)) for s in groups.values())
    # Gradual pruning's masks are fixed once it is done: its rewind runs stack like the rest.
    assert sizes == sorted((label, control, n) for label, n in
                           (("global_magnitude", 4), ("gradual_magnitude", 4), ("nm_2_4", 2))
                           for control in ("ticket", "reinit"))
    late = context(tmp_path / "b", params(rewind={"iteration": 7, "reinit_control": True}))
    late_stacks = stacks(stage, late, stage.runs(late))
    assert {r.meta["control"] for s in late_stacks.values() for r in s} == {"reinit"}


# ---------------------------------------------------------------- (b) one-round lottery chain

ONE_ROUND = {
    "data": {"name": "digits"},
    "model": {"name": "mlp_digits"},
    "train": TRAIN,
    # One lottery round prunes half of all weights by global magnitude (its criterion): at a
    # target of 0.5 its chain has one level, the one-shot method's pruning.
    "methods": {"global_magnitude": {},
                "lottery": {"prune_fraction": 0.5, "reinit_control": False}},
    "sparsities": [0.5],
    "recover": ["rewind"],
    "seeds": [0],
}


def _run(capsys, *args) -> list[dict]:
    assert main([*args, "--no-progress"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("iteration", [0, 15])
def test_rewinding_at_one_target_is_a_one_round_lottery_chain_bit_for_bit(
        tmp_path, monkeypatch, capsys, iteration):
    monkeypatch.chdir(tmp_path)
    study = copy.deepcopy(ONE_ROUND)
    study["methods"]["lottery"]["rewind_iteration"] = iteration
    write(tmp_path, params(study, rewind={"iteration": iteration}))
    [level] = _run(capsys, "lottery")
    [rewound] = _run(capsys, "rewind")
    ticket, mine = tmp_path / level["path"], tmp_path / rewound["path"]
    config = json.loads((ticket / "config.json").read_text())["config"]
    assert config["levels"] == [0.5]  # the chain has one level
    assert (rewound["recovery"], rewound["control"], level["control"]) == (
        "rewind", "ticket", "ticket")
    # The same mask: the one-shot pruning of the dense run is the lottery's first round.
    mask_a, mask_b = load_tensors(ticket / "mask.pt"), load_tensors(mine / "mask.pt")
    assert mask_a.keys() == mask_b.keys()
    assert all(torch.equal(mask_a[k], mask_b[k]) for k in mask_a)
    # The same rewound start, recipe and schedule: the same bits after training.
    weights_a, weights_b = _weights(ticket), _weights(mine)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    metrics = json.loads((mine / "metrics.json").read_text())
    assert metrics["start_iteration"] == iteration and "stack_members" not in metrics
    assert metrics["top1"] == json.loads((ticket / "metrics.json").read_text())["top1"]


# ---------------------------------------------------------------- (c) late rewinding


def test_late_rewinding_starts_from_the_dense_runs_weights_at_iteration_k(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    k = 15  # 11 steps per epoch of digits at batch 128: 4 steps into the second epoch
    study = {**copy.deepcopy(ONE_ROUND), "methods": {"global_magnitude": {}}}
    write(tmp_path, params(study, rewind={"iteration": k}))
    starts = {}
    real_train = Executor.train

    def spy(self, run_dir, model, recipe, seed, mask=None, **kw):
        if run_dir is not None and Path(run_dir).parent.name == "recover":
            starts[Path(run_dir).name] = ({n: t.detach().clone()
                                           for n, t in model.state_dict().items()},
                                          kw.get("start_iteration"), mask)
        return real_train(self, run_dir, model, recipe, seed, mask, **kw)

    monkeypatch.setattr(Executor, "train", spy)
    [rewound] = _run(capsys, "rewind")
    run_dir = tmp_path / rewound["path"]
    start, start_iteration, mask = starts[run_dir.name]
    assert start_iteration == k

    # The dense run once more, uninterrupted, from its own initial weights, saving iteration k.
    ctx = StudyContext(load_study("params.yaml", "s"), tmp_path / "runs")
    dense = dense_run(ctx, 0)
    model = ctx.dense_arch.build()
    model.load_state_dict(load_tensors(dense.path / "init.pt"))
    data = load_data(DataConfig(name="digits"), torch.device("cpu"))
    train(model, data, ctx.study.train, seed=0, run_dir=tmp_path / "again",
          save_iterations=[k], progress=False)
    final = _weights(dense.path)
    assert all(torch.equal(model.state_dict()[n], final[n]) for n in final)  # the same run
    at_k = load_tensors(tmp_path / "again" / "checkpoints" / f"iter_{k}.pt")
    assert start.keys() == at_k.keys()
    for name, value in at_k.items():
        expected = value * mask[name].to(value.dtype) if name in mask else value
        assert torch.equal(start[name], expected), name
    assert any(not torch.equal(at_k[n], load_tensors(dense.path / "init.pt")[n]) for n in at_k)
    # It trained from iteration k to the end of the recipe: the second epoch only.
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [2] and history["iteration"].tolist() == [22]


# ---------------------------------------------------------------- (d) bad options


@pytest.mark.parametrize("change, message", [
    ({"rewind": {"iteration": -1}}, "studies.s.rewind.iteration must be >= 0, got -1"),
    ({"rewind": {"iteration": 1.5}}, "studies.s.rewind.iteration must be int, got 1.5"),
    ({"rewind": {"iteration": True}}, "studies.s.rewind.iteration must be int, got True"),
    ({"rewind": {"reinit_control": "yes"}},
     "studies.s.rewind.reinit_control must be bool, got 'yes'"),
    ({"rewind": {"iterations": 3}},
     "unknown key studies.s.rewind.iterations; allowed: iteration, reinit_control"),
    ({"rewind": 100}, "studies.s.rewind must be a mapping, got int"),
    ({"recover": ["finetune", "rewinding"]},
     "studies.s.recover must be a non-empty list of distinct values from finetune, distill, "
     "rewind"),
])
def test_bad_rewind_options_are_refused_at_parse_time(tmp_path, capsys, change, message):
    path = write(tmp_path, params(**change))
    assert main(["plan", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_rewinding_needs_training_epochs_and_an_iteration_inside_training(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = StudyContext(load_study(write(tmp_path, params()), "s"), "runs").dense_arch.build()
    torch.save(model.state_dict(), tmp_path / "start.pt")
    sha = hashlib.sha256((tmp_path / "start.pt").read_bytes()).hexdigest()
    kept = params({**copy.deepcopy(ONE_ROUND), "methods": {"global_magnitude": {}}},
                  model={"name": "mlp_digits", "checkpoint": {"path": "start.pt", "sha256": sha}},
                  train={**TRAIN, "epochs": 0}, finetune={"epochs": 1})
    write(tmp_path, kept)
    assert main(["plan", "--params", "params.yaml"]) == 2
    assert ("studies.s.recover: rewind retrains with the study's train recipe, but "
            "train.epochs is 0") in capsys.readouterr().err
    # Past the end of training (22 iterations): refused before anything of the run is made.
    write(tmp_path, params({**copy.deepcopy(ONE_ROUND), "methods": {"global_magnitude": {}}},
                           rewind={"iteration": 22}))
    assert main(["rewind", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "studies.s.rewind.iteration must be below the train recipe's 22 iterations, got 22" \
        in err
    assert not (tmp_path / "runs" / "recover").exists() or not any(
        (tmp_path / "runs" / "recover").iterdir())


def test_the_schema_declares_the_rewind_options():
    study = json_schema()["properties"]["studies"]["additionalProperties"]["properties"]
    rewind = study["rewind"]
    assert rewind["additionalProperties"] is False
    assert rewind["properties"]["iteration"]["type"] == "integer"
    assert rewind["properties"]["iteration"]["minimum"] == 0
    assert rewind["properties"]["iteration"]["default"] == 0
    assert rewind["properties"]["reinit_control"] == {
        **rewind["properties"]["reinit_control"], "type": "boolean", "default": False}
    assert "rewind" in study["recover"]["items"]["enum"]


# ---------------------------------------------------------------- (e) stacking


def test_two_seeds_rewind_runs_train_as_one_stack_equal_to_runs_trained_alone(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = {**copy.deepcopy(ONE_ROUND), "methods": {"global_magnitude": {}}, "seeds": [0, 1],
             "rewind": {"reinit_control": True}}
    raw = params(study)
    write(tmp_path, raw)
    made = _run(capsys, "rewind", "--manifest", "rewind.json")
    assert len(made) == 4  # a ticket and a control per seed
    for run in made:
        metrics = json.loads((tmp_path / run["path"] / "metrics.json").read_text())
        assert metrics["stack_members"] == 2  # the two seeds' tickets, the two controls

    # The same rewind runs one at a time, from the same parents (copied: same names).
    alone = copy.deepcopy(raw)
    alone["runs_root"] = "alone"
    alone["studies"]["s"]["stack"] = {"max_members": 1}
    for kind in ("train", "prune"):
        shutil.copytree(tmp_path / "runs" / kind, tmp_path / "alone" / kind)
    write(tmp_path / "alone_params", alone)
    solo = _run(capsys, "rewind", "--params", str(tmp_path / "alone_params" / "params.yaml"))
    assert [r["path"].replace("alone/", "runs/", 1) for r in solo] == [r["path"] for r in made]
    for run in made:
        mine = tmp_path / run["path"]
        other = tmp_path / run["path"].replace("runs/", "alone/", 1)
        masks = load_tensors(mine / "mask.pt"), load_tensors(other / "mask.pt")
        assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
        a, b = _weights(mine), _weights(other)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
        assert "stack_members" not in json.loads((other / "metrics.json").read_text())

    # The tables read them: recovery "rewind", a ticket and its control per seed.
    runs = collect_runs([tmp_path / "rewind.json"])
    assert sorted(set(zip(runs["series"], runs["recovery"], runs["control"]))) == [
        ("global_magnitude+rewind", "rewind", "ticket"),
        ("global_magnitude+rewind_reinit", "rewind", "reinit")]
    table = lottery_table(summarise(runs), "s")
    assert "| global_magnitude+rewind |" in table


# ---------------------------------------------------------------- (f) tables and figures


def _summary(with_finetune: bool) -> pd.DataFrame:
    def row(series, label, method, recovery, control, target, top1):
        return {"study": "s", "series": series, "label": label, "method": method,
                "recovery": recovery, "control": control, "target_sparsity": target,
                "weight_sparsity_mean": target, "top1_mean": top1, "top1_std": 0.001, "n": 2,
                "early_stop_iteration_mean": 100.0, "early_stop_iteration_std": 10.0}

    rows = [row("dense", "dense", "dense", None, None, 0.0, 0.98)]
    for t in (0.5, 0.8):
        rows += [row("mag+rewind", "mag", "global_magnitude", "rewind", "ticket", t, 0.97),
                 row("mag+rewind_reinit", "mag", "global_magnitude", "rewind", "reinit", t,
                     0.90),
                 row("lottery", "lottery", "lottery", None, "ticket", t, 0.975),
                 row("lottery_reinit", "lottery", "lottery", None, "reinit", t, 0.91)]
        if with_finetune:
            rows.append(row("mag", "mag", "global_magnitude", "finetune", None, t, 0.96))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("with_finetune", [True, False])
def test_rewind_tickets_sit_beside_lottery_tickets_with_their_own_controls(with_finetune):
    summary = _summary(with_finetune)
    lines = [line for line in lottery_table(summary, "s").splitlines()
             if line.startswith("| ") and "Method" not in line]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [c[0] for c in cells] == ["dense", "lottery", "lottery", "mag+rewind", "mag+rewind"]
    # Each ticket beside its own control: 97.00 (rewind) with 90.00, 97.50 (lottery) with 91.
    assert [c[2:4] for c in cells[1:]] == [["97.50 ± 0.10", "91.00 ± 0.10"]] * 2 + [
        ["97.00 ± 0.10", "90.00 ± 0.10"]] * 2
    fig = lottery_figure(summary, "s")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["lottery (ticket)", "lottery (random reinit)", "mag+rewind (ticket)",
                      "mag+rewind (random reinit)"]
