"""The CLI: run directories named by config hash, reuse, and clean failures on bad input."""

from __future__ import annotations

from collections import Counter

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunebench.cli import main
from prunebench.config import DataConfig, TrainConfig, canonical, config_hash

TINY = {
    "runs_root": "runs",
    "studies": {
        "tiny": {
            "data": {"name": "digits"},
            "model": {"name": "mlp_digits"},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
            "finetune": {"epochs": 1},
            "methods": {"global_magnitude": {}, "lottery": {"prune_fraction": 0.5}},
            "sparsities": [0.5],
            "seeds": [0],
        }
    },
}


def write_params(tmp_path: Path, params=TINY) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    return tmp_path


def test_run_names_are_pinned_hashes_without_defaults():
    # Changing these pins renames every existing run directory: do it only deliberately.
    # Defaults are left out, but for the optimiser implementation (always named: the runs
    # named before it existed used another one).
    assert canonical({"train": TrainConfig()}) == {"train": {"optimizer_impl": "fused"}}
    assert config_hash({"data": DataConfig(), "train": TrainConfig(epochs=3)}) == "9fea39d0aab68b34"
    assert config_hash({"train": TrainConfig(epochs=3)}) == "5c46aa91d8974fdc"
    # Fields that do not change results (where data lives) are not part of the name.
    assert config_hash({"data": DataConfig(root="/elsewhere", mirror="/m")}) == config_hash(
        {"data": DataConfig()})
    assert config_hash({"train": TrainConfig(epochs=3.0)}) == config_hash({"train": TrainConfig(epochs=3)})


def test_train_finetune_lottery_write_runs_and_reuse_them(in_tmp, capsys):
    assert main(["train", "--no-progress"]) == 0
    train_line = json.loads(capsys.readouterr().out.splitlines()[0])
    run_dir = in_tmp / train_line["path"]
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert config["kind"] == "train" and config["config"]["train"]["epochs"] == 2
    assert 0.5 < metrics["top1"] <= 1.0
    assert 0.99 * metrics["params_total"] < metrics["params_nonzero"] <= metrics["params_total"]
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns

    assert main(["finetune", "--method", "global_magnitude", "--no-progress",
                 "--manifest", "m.json"]) == 0
    fine = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert fine["kind"] == "recover" and fine["recovery"] == "finetune"
    assert fine["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    manifest = json.loads((in_tmp / "m.json").read_text())
    assert [r["path"] for r in manifest["runs"]] == [fine["path"]]
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp  # dense run reused

    assert main(["lottery", "--method", "lottery", "--no-progress"]) == 0
    kinds = [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["lottery", "lottery_reinit"]

    # Same config => same directory; an override => a new one.
    assert main(["train", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == train_line["path"]
    assert main(["train", "--no-progress", "--set", "train.epochs=1"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] != train_line["path"]
    # The thread count changes results, so it names the run (and is recorded in it).
    assert metrics["threads"] == 1
    assert main(["train", "--no-progress", "--threads", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["path"] != train_line["path"]
    assert json.loads((in_tmp / two["path"] / "metrics.json").read_text())["threads"] == 2

    ev = subprocess.run([sys.executable, "-m", "prunebench.cli", "evaluate", str(run_dir)],
                        capture_output=True, text=True, cwd=in_tmp, check=True)
    assert json.loads(ev.stdout)["top1"] == pytest.approx(metrics["top1"])


BAD = [
    (["train", "--set", "model.name=resnet1000"], "model.name", "lenet_300_100"),
    (["train", "--set", "data.name=imagenet"], "data.name", "cifar10"),
    (["finetune", "--method", "magic"], "methods", "global_magnitude"),
    (["train", "--set", "methods.global_magnitude.method=magic"], "methods.global_magnitude", "random"),
    (["finetune", "--method", "global_magnitude", "--sparsity", "1.0"], "sparsity", "[0, 1)"),
    (["train", "--set", "sparsities=[0.5, -0.1]"], "sparsities", "[0, 1)"),
    (["train", "--set", "train.optimizer=rmsprop"], "train.optimizer", "sgd"),
    (["train", "--set", "train.epochs=many"], "train.epochs", "int"),
    (["train", "--set", "train.colour=red"], "train.colour", "batch_size"),
    (["train", "--set", "data.name=mnist", "--set", "data.download=false",
      "--set", "data.root=nowhere"], "train-images-idx3-ubyte", "data.mirror"),
    (["lottery", "--method", "global_magnitude"], "global_magnitude", "prunebench finetune"),
    (["train", "--study", "nope"], "nope", "tiny"),
]


@pytest.mark.parametrize("args,names,allowed", BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_names_key_exits_2_writes_nothing(in_tmp, capsys, args, names, allowed,
                                                                 monkeypatch):
    monkeypatch.delenv("PRUNEBENCH_DATA_MIRROR", raising=False)
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = [line for line in err if line.startswith("prunebench: error:")]
    assert len(message) == 1, err
    assert names in message[0] and allowed in message[0]
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("command", ["train", "sensitivity", "prune", "finetune", "distill",
                                     "lottery", "evaluate", "data"])
def test_every_command_has_help(command):
    out = subprocess.run([sys.executable, "-m", "prunebench.cli", command, "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "usage: prunebench" in out.stdout


def test_repository_params_are_valid_and_every_study_plans():
    from prunebench.config import apply_overrides, read_params
    from prunebench.plan import plan
    from prunebench.study import validate_params

    raw = read_params(Path(__file__).parents[1] / "params.yaml")
    studies = validate_params(raw)
    assert {s.scale for s in studies.values()} == {"default", "paper", "smoke", "reference"}
    jobs = plan(apply_overrides(raw, ["scale=all"]))
    assert {j.study for j in jobs} == set(studies)
    default = plan(raw)
    labels = {j.label for j in default if j.stage in ("train", "finetune", "lottery")} - {"dense"}
    assert labels == {e.label for s in studies.values() if s.scale == "default" for e in s.methods}
    only = plan(apply_overrides(raw, ["only=fmnist_lenet5"]))
    assert {j.study for j in only} == {"fmnist_lenet5"}
    # One job per grid point: dense training per seed, prune and recovery per method x seed
    # x target, one lottery chain per method x seed, one benchmark per result run.
    digits = studies["digits_cnn"]
    n_seeds = len(digits.seeds)
    by_stage = Counter(j.stage for j in default)
    assert sum(1 for j in default if j.stage == "train" and j.label == "dense") == n_seeds
    assert by_stage["lottery"] == n_seeds * sum(e.method == "lottery" for e in digits.methods)
    assert all(len(j.runs) == 1 for j in default if j.stage != "lottery")
    per_label = Counter((j.stage, j.label) for j in default)
    assert per_label[("prune", "global_magnitude")] == n_seeds * len(digits.sparsities)
    assert per_label[("finetune", "l1_filter")] == n_seeds * len(digits.channel_sparsities)
    assert per_label[("prune", "nm_2_4")] == n_seeds  # N:M fixes its sparsity
    assert len({j.hash for j in default}) == len(default)


STRUCTURED = {
    "runs_root": "runs",
    "studies": {
        "tiny": {
            "data": {"name": "digits"},
            "model": {"name": "cnn_digits_bn"},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
            "finetune": {"epochs": 1},
            "methods": {"l1_filter": {}, "slimming": {"penalty": 0.001},
                        "global_magnitude": {}},
            "sparsities": [0.75],
            "channel_sparsities": [0.5],
            "recover": ["finetune", "distill"],
            "seeds": [0],
        }
    },
}


def test_structured_runs_shrink_and_survive_a_weights_only_round_trip(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, STRUCTURED)
    assert main(["finetune", "--method", "l1_filter", "--no-progress"]) == 0
    run = json.loads(capsys.readouterr().out.splitlines()[-1])
    run_dir = tmp_path / run["path"]
    arch = json.loads((run_dir / "arch.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Half of the 16/32/32 conv channels and of the 64 hidden units are gone; the classifier stays.
    assert metrics["channels"] == {"0": 8, "3": 16, "7": 16, "11": 32, "13": 10}
    assert [e["layer"] for e in arch["edits"]] and not (run_dir / "mask.pt").exists()
    assert run["channel_sparsity"] == 0.5 and run["target_sparsity"] is None
    # About 3/4 of the weights and MACs are gone, which is not the 50 % asked for.
    assert 0.65 < metrics["param_reduction"] < 0.85 and 0.6 < metrics["macs_reduction"] < 0.85
    assert metrics["weight_sparsity"] == 0.0
    # A fresh process rebuilds the shapes from arch.json and loads with weights_only=True.
    ev = subprocess.run([sys.executable, "-m", "prunebench.cli", "evaluate", str(run_dir)],
                        capture_output=True, text=True, cwd=tmp_path, check=True)
    assert json.loads(ev.stdout)["top1"] == pytest.approx(metrics["top1"])
    assert json.loads(ev.stdout)["params_total"] == metrics["params_total"]

    # Distillation recovers the same pruned network, taught by the dense run of its seed.
    assert main(["distill", "--method", "l1_filter", "--no-progress"]) == 0
    kd = json.loads(capsys.readouterr().out.splitlines()[-1])
    kd_config = json.loads((tmp_path / kd["path"] / "config.json").read_text())
    assert kd["label"] == "l1_filter" and kd["recovery"] == "distill" and kd["control"] is None
    assert kd_config["config"]["parent"] == json.loads(
        (run_dir / "config.json").read_text())["config"]["parent"]
    assert kd_config["config"]["teacher"]["seed"] == 0

    # Slimming prunes its own BN-penalised dense model, not the plain one.
    assert main(["prune", "--method", "slimming", "--no-progress"]) == 0
    slim = json.loads(capsys.readouterr().out.splitlines()[-1])
    slim_config = json.loads((tmp_path / slim["path"] / "config.json").read_text())
    assert slim_config["config"]["parent"]["train"]["bn_l1"] == 0.001


def test_a_stage_refuses_a_method_it_does_not_run_and_names_the_right_verb(in_tmp, capsys):
    assert main(["prune", "--method", "lottery", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "prunebench lottery" in err and "global_magnitude" in err
    assert not (in_tmp / "runs").exists()


def test_benchmark_stage_measures_every_result_model(tmp_path, monkeypatch, capsys):
    params = json.loads(json.dumps(STRUCTURED))
    study = params["studies"]["tiny"]
    study["methods"] = {"l1_filter": {}, "global_magnitude": {}}
    study["recover"] = ["finetune"]
    study["benchmark"] = {"batch_sizes": [1, 16], "min_time_s": 0.01}
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, params)
    assert main(["benchmark", "--no-progress", "--threads", "1", "--manifest", "b.json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((r["kind"], r["label"]) for r in lines) == [
        ("benchmark", "dense"), ("benchmark", "global_magnitude"), ("benchmark", "l1_filter")]
    heads = {r["label"]: json.loads((tmp_path / r["path"] / "metrics.json").read_text())
             for r in lines}
    dense, channels, masked = heads["dense"], heads["l1_filter"], heads["global_magnitude"]
    # Channel pruning shrinks dense-kernel MACs and the checkpoint; a mask shrinks neither,
    # only the effective MACs and the sparse encoding.
    assert channels["macs_dense"] < 0.5 * dense["macs_dense"]
    assert channels["size_dense_bytes"] < 0.5 * dense["size_dense_bytes"]
    assert masked["macs_dense"] == dense["macs_dense"]
    assert masked["macs_effective"] < 0.5 * masked["macs_dense"]
    assert masked["size_sparse_bytes"] < 0.6 * masked["size_dense_bytes"]
    assert "latency_sparse_csr_b16_ms" in masked and "latency_dense_b1_ms" in dense
    assert dense["energy_mj_per_sample"] is None and dense["energy_unavailable_reason"]
    assert dense["threads"] == 1
    record = json.loads((tmp_path / lines[0]["path"] / "benchmark.json").read_text())
    assert record["environment"]["torch_version"] and "semi_structured_2_4" in record[
        "modes_skipped"]
    manifest = json.loads((tmp_path / "b.json").read_text())
    assert {r["of"] for r in manifest["runs"]} == {
        json.loads((tmp_path / r["path"] / "config.json").read_text())["of"] for r in lines}


def test_duplicate_keys_in_the_params_file_are_refused(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text("studies:\n  tiny:\n    methods:\n      random: {}\n      random: {}\n")
    assert main(["plan", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'random' is given twice" in err[0] and "line 5" in err[0]


def test_a_run_that_fails_leaves_no_directory_behind(tmp_path, monkeypatch, capsys):
    params = json.loads(json.dumps(TINY))
    params["studies"]["tiny"]["methods"] = {"slimming": {}}  # an MLP has no BatchNorm
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, params)
    assert main(["prune", "--no-progress"]) == 2
    assert "slimming" in capsys.readouterr().err
    assert [p.parent.name for p in (tmp_path / "runs").glob("*/*")] == ["train"]


def test_a_damaged_finished_run_is_redone_and_a_damaged_file_is_named(in_tmp, capsys):
    assert main(["train", "--no-progress"]) == 0
    run = json.loads(capsys.readouterr().out)
    run_dir = in_tmp / run["path"]
    before = json.loads((run_dir / "metrics.json").read_text())
    checksums = json.loads((run_dir / "checksums.json").read_text())
    assert {"model.pt", "init.pt", "arch.json", "config.json"} <= set(checksums)
    model = run_dir / "model.pt"
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    # evaluate names the damaged file on one line instead of a traceback
    assert main(["evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pt" in err[0] and "cannot be loaded" in err[0]
    # the stage notices the checksum mismatch and redoes the run, bit for bit
    assert main(["train", "--no-progress"]) == 0
    capsys.readouterr()
    assert model.read_bytes() == good
    assert json.loads((run_dir / "metrics.json").read_text())["top1"] == before["top1"]


def test_the_optimiser_implementation_is_part_of_every_run_name():
    """Fused, foreach and loop steps round differently: a run made with one is never reused
    for another, and runs named before the choice existed (the loop) are not reused either."""
    import dataclasses

    from prunebench.config import TrainConfig, canonical, config_hash

    recipe = TrainConfig()
    assert recipe.optimizer_impl == "fused" and canonical(recipe)["optimizer_impl"] == "fused"
    names = {config_hash({"train": dataclasses.replace(recipe, optimizer_impl=impl)})
             for impl in ("fused", "foreach", "forloop")}
    old = {k: v for k, v in canonical(recipe).items() if k != "optimizer_impl"}
    assert len(names) == 3 and config_hash({"train": old}) not in names


def test_sparsity_selects_one_grid_point_in_every_stage(tmp_path):
    """`--sparsity` reads the target the run's spec was planned for, whatever the stage: the
    pruned, recovered and benchmark runs of one point, channel sparsities for structured
    methods, 0 for the dense run."""
    from prunebench.cli import select_runs
    from prunebench.context import StudyContext
    from prunebench.stages import STAGES
    from prunebench.study import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "params.yaml", "digits_cnn_portable")  # 0.8 and distill
    ctx = StudyContext(study, tmp_path)
    for stage in ("prune", "finetune", "distill", "benchmark"):
        runs = select_runs(STAGES[stage], ctx, "global_magnitude", [0, 1], [0.8])
        assert len(runs) == 2 * (2 if stage == "benchmark" else 1), stage
        assert {r.spec.target for r in runs} == {0.8}
    assert len(select_runs(STAGES["benchmark"], ctx, "l1_filter", [0, 1], [0.5])) == 4
    dense = select_runs(STAGES["train"], ctx, "dense", [1], [0.0])
    assert [r.spec.seed for r in dense] == [1] and not dense[0].parents
