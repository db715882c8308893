"""`prunebench compare`: result sets made to differ from a synthetic runs table in known ways.

Every grid point of the table has three seeds whose top-1 is its base -d, +0, +d (sample std
exactly d) and whose loss is its base -e, +0, +e, so a shift by k·d is k σ."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prunebench.analysis.compare import chance_allowance, sign_test, t_two_sided
from prunebench.cli import main

D, E = 0.005, 0.01  # the seed std of top-1 and of loss at every three-seed grid point
SEEDS = (0, 1, 2)
# (series, label, method, target_sparsity, channel_sparsity, recovery, control, top-1 base)
POINTS = [
    ("dense", "dense", "dense", 0.0, None, None, None, 0.98),
    ("magnitude", "magnitude", "global_magnitude", 0.5, None, "finetune", None, 0.975),
    ("magnitude", "magnitude", "global_magnitude", 0.9, None, "finetune", None, 0.95),
    ("magnitude+distill", "magnitude", "global_magnitude", 0.9, None, "distill", None, 0.955),
    ("random", "random", "random", 0.5, None, "finetune", None, 0.96),
    ("random", "random", "random", 0.9, None, "finetune", None, 0.90),
    ("l1_filter", "l1_filter", "l1_filter", None, 0.5, "finetune", None, 0.93),
    ("lottery", "lottery", "lottery", 0.8, None, None, "ticket", 0.97),
    ("lottery_reinit", "lottery", "lottery", 0.8, None, None, "reinit", 0.94),
]


def runs_table(study: str = "toy", seeds=SEEDS) -> pd.DataFrame:
    rows = []
    for i, (series, label, method, target, channels, recovery, control, base) in \
            enumerate(POINTS):
        for seed in seeds:
            offset = seed - 1  # -1, 0, +1
            rows.append({"study": study, "dataset": "digits", "model": "mlp", "method": method,
                         "label": label, "target_sparsity": target,
                         "channel_sparsity": channels, "recovery": recovery,
                         "control": control, "series": series, "seed": seed,
                         "top1": base + offset * D, "top5": 1.0,
                         "loss": 0.1 + 0.05 * i + offset * E,
                         "run_dir": f"runs/{series}/{seed}", "hash": f"h{i}{seed}"})
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, path: Path) -> Path:
    """`frame` as `prunebench aggregate` writes a runs.csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")
    return path


def at(frame: pd.DataFrame, series: str, target: float) -> pd.Series:
    return (frame["series"] == series) & (frame["target_sparsity"] == target)


NO_WEIGHTS = "top-1 and loss; weights not recorded in both sets)"


def compare(capsys, *argv) -> tuple[int, str]:
    code = main(["compare", *map(str, argv)])
    return code, capsys.readouterr().out


def verdicts(out: str) -> list[str]:
    """The verdict lines, one per study, that end the output."""
    return [line for line in out.splitlines()
            if ": bit-identical" in line or ": reproduced" in line or ": NOT" in line]


def test_identical_sets_are_bit_identical(tmp_path, capsys):
    a = write(runs_table(), tmp_path / "a" / "runs.csv")
    b = write(runs_table(), tmp_path / "b" / "runs.csv")
    code, out = compare(capsys, a, b.parent, "--max-outside", 0)
    assert code == 0
    assert verdicts(out) == ["toy: bit-identical (all 27 rows: " + NO_WEIGHTS]
    assert "| Grid point" not in out  # nothing to tabulate


def test_equal_numbers_from_other_weights_are_not_bit_identical(tmp_path, capsys):
    """Where runs.csv records each model's digest, a row is bit-identical only if its
    weights are: equal top-1 and loss can come from weights that differ in the last bit."""
    a = runs_table()
    a["weights_sha256"] = [f"{i:064x}" for i in range(len(a))]
    b = a.copy()
    code, out = compare(capsys, write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv"))
    assert code == 0
    assert verdicts(out) == ["toy: bit-identical (all 27 rows: top-1, loss and weights)"]
    b.loc[3, "weights_sha256"] = "f" * 64
    code, out = compare(capsys, write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv"))
    assert "toy: bit-identical" not in out and "26/27 rows bit-identical" in out


def test_small_noise_is_reproduced_within_noise(tmp_path, capsys):
    b = runs_table()
    noise = np.random.default_rng(0).uniform(-0.2 * D, 0.2 * D, len(b))
    b["top1"] += noise
    b["loss"] += noise
    code, out = compare(capsys, write(runs_table(), tmp_path / "a.csv"),
                        write(b, tmp_path / "b.csv"), "--max-outside", 0, "--json",
                        tmp_path / "r.json")
    assert code == 0
    assert verdicts(out) == ["toy: reproduced within noise: 9/9 grid points within 2σ (at "
                             "most 0 outside allowed by --max-outside; 0/27 rows "
                             "bit-identical)"]
    result = json.loads((tmp_path / "r.json").read_text())
    (study,) = result["studies"]
    assert study["status"] == "reproduced" and study["outside"] == []
    assert all(abs(p["top1"]["z"]) < 0.5 and p["rows_equal"] == 0 for p in study["points"])
    assert all(p["top1"]["sigma"] == pytest.approx(D, rel=0.2) for p in study["points"])


def test_a_point_shifted_by_five_sigma_is_named_and_fails_max_outside(tmp_path, capsys):
    a = write(runs_table(), tmp_path / "a.csv")
    shifted = runs_table()
    shifted.loc[at(shifted, "random", 0.9), "top1"] += 5 * D
    b = write(shifted, tmp_path / "b.csv")

    code, out = compare(capsys, a, b, "--max-outside", 0, "--json", tmp_path / "r.json")
    assert code == 1
    assert verdicts(out) == ["toy: NOT reproduced: 1/9 grid points outside 2σ (at most 0 "
                             "outside allowed by --max-outside; 24/27 rows bit-identical): "
                             "random@s0.90 (+5.0σ)"]
    table = out.split("| Grid point")[1].splitlines()
    assert table[2].split("|")[1].strip() == "random@s0.90"  # largest |Δ/σ| first
    assert "+2.50" in table[2] and "+5.0" in table[2]  # Δ 2.5 pp = 5 × 0.5 pp
    point = next(p for p in json.loads((tmp_path / "r.json").read_text())["studies"][0]["points"]
                 if p["point"] == "random@s0.90")
    assert point["top1"]["z"] == pytest.approx(5.0)
    assert point["loss"]["z"] == 0 and point["rows_equal"] == 0

    assert compare(capsys, a, b, "--max-outside", 1)[0] == 0
    # By default chance allows 3 of 9 three-seed points outside 2σ (a faithful rerun puts
    # each there 7 % of the time, more than 3 of them 0.2 % of the time).
    code, out = compare(capsys, a, b)
    assert code == 0 and "8/9 grid points within 2σ (at most 3 outside allowed by chance" in out
    # At K = 6 the shift is within noise.
    code, out = compare(capsys, a, b, "--sigma", 6, "--max-outside", 0)
    assert code == 0 and "9/9 grid points within 6σ" in out


def test_sigma_is_pooled_over_both_sets(tmp_path, capsys):
    b = runs_table()
    dense = at(b, "dense", 0.0)
    b.loc[dense, "top1"] = 0.98 + 2 * D + (b.loc[dense, "seed"] - 1) * 3 * D  # std 3 D
    code, _ = compare(capsys, write(runs_table(), tmp_path / "a.csv"),
                      write(b, tmp_path / "b.csv"), "--json", tmp_path / "r.json")
    point = json.loads((tmp_path / "r.json").read_text())["studies"][0]["points"][0]
    assert point["point"] == "dense@s0.00"
    sigma = np.sqrt((2 * D**2 + 2 * 9 * D**2) / 4)  # (n_a - 1) s_a² + (n_b - 1) s_b², 4 df
    assert point["top1"]["sigma"] == pytest.approx(sigma)
    assert point["top1"]["z"] == pytest.approx(2 * D / sigma)


def test_more_points_outside_than_chance_allows_is_not_reproduced(tmp_path, capsys):
    b = runs_table()
    shifted = ["dense", "random", "l1_filter", "lottery"]
    b.loc[b["series"].isin(shifted), "top1"] -= 3 * D
    code, out = compare(capsys, write(runs_table(), tmp_path / "a.csv"),
                        write(b, tmp_path / "b.csv"))
    assert code == 1
    assert verdicts(out)[0].startswith("toy: NOT reproduced: 5/9 grid points outside 2σ (at "
                                       "most 3 outside allowed by chance; ")
    assert "(-3.0σ)" in verdicts(out)[0]


def test_a_shift_of_every_point_within_noise_is_not_reproduced(tmp_path, capsys):
    a = pd.concat([runs_table(), runs_table().assign(series=lambda f: f["series"] + "_2",
                                                     label=lambda f: f["label"] + "_2")])
    b = a.copy()
    b["top1"] -= D  # 1 σ lower everywhere: each point within 2σ, all 18 of them lower
    code, out = compare(capsys, write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv"))
    assert code == 1
    assert verdicts(out)[0].startswith(
        "toy: NOT reproduced: top-1 is lower in B at 18 of the 18 grid points that differ (a "
        "shift; sign test p = 8e-06), though 18/18 grid points within 2σ")
    assert sign_test([-1.0] * 10 + [1.0] * 2 + [0.0])["p"] == pytest.approx(158 / 4096)
    assert sign_test([0.0, 0.0])["p"] == 1.0


def test_chance_of_a_faithful_rerun_outside():
    for t in (0.5, 2.0, 4.0):  # closed forms: df 1 Cauchy, df 2, df 0 normal
        assert t_two_sided(t, 1) == pytest.approx(1 - 2 / np.pi * np.arctan(t))
        assert t_two_sided(t, 2) == pytest.approx(1 - t / np.sqrt(t * t + 2))
        assert t_two_sided(t, 0) == pytest.approx(math.erfc(t / np.sqrt(2)))
    assert t_two_sided(2.0, 30) < t_two_sided(2.0, 3) < t_two_sided(2.0, 2)
    # Binomial(9, 0.07): P(more than 2) = 2.1 %, P(more than 3) = 0.23 %.
    assert chance_allowance([0.07] * 9) == 3
    assert chance_allowance([0.07] * 9, false_alarm=0.05) == 2
    assert chance_allowance([0.0] * 9) == 0 and chance_allowance([]) == 0


def test_points_in_one_set_only_are_listed(tmp_path, capsys):
    b = runs_table()
    b = b[~at(b, "random", 0.9)]
    extra = runs_table()[at(runs_table(), "random", 0.5)].assign(target_sparsity=0.7)
    b = pd.concat([b, extra])
    code, out = compare(capsys, write(runs_table(), tmp_path / "a.csv"),
                        write(b, tmp_path / "b.csv"), "--json", tmp_path / "r.json")
    assert code == 0  # points the other set lacks are listed, not counted as outside
    assert verdicts(out) == [
        "toy: reproduced within noise: 8/8 grid points within 2σ (at most 3 outside allowed "
        "by chance; 24/24 rows bit-identical); 1 grid point only in A: random@s0.90; 1 grid "
        "point only in B: random@s0.70"]
    assert "Only in A (1): random@s0.90" in out and "Only in B (1): random@s0.70" in out
    study = json.loads((tmp_path / "r.json").read_text())["studies"][0]
    assert study["only_in_a"] == ["random@s0.90"] and study["only_in_b"] == ["random@s0.70"]


def test_single_seed_and_zero_spread_points_fall_back_to_the_median_sigma(tmp_path, capsys):
    def table(top1_single: float) -> pd.DataFrame:
        frame = runs_table()
        single = frame[at(frame, "dense", 0.0) & (frame["seed"] == 0)].assign(
            series="snip", label="snip", method="snip", target_sparsity=0.95,
            recovery="finetune", top1=top1_single)
        frame.loc[at(frame, "random", 0.5), "top1"] = 0.96  # three equal seeds
        return pd.concat([frame, single])

    b = table(0.9025)
    b.loc[at(b, "random", 0.5), "top1"] += D
    code, out = compare(capsys, write(table(0.9), tmp_path / "a.csv"),
                        write(b, tmp_path / "b.csv"), "--rows", 0, "--json",
                        tmp_path / "r.json")
    assert code == 0
    assert ("σ*: 2 grid points have one seed in each set or no spread; σ there is the "
            "study's median seed std (top-1 0.50 pp, loss 0.0100).") in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ")}
    assert "0.50*" in rows["snip@s0.95"] and "+0.5" in rows["snip@s0.95"]
    assert "0.50*" in rows["random@s0.50"] and "+1.0" in rows["random@s0.50"]
    points = {p["point"]: p for p in json.loads((tmp_path / "r.json").read_text())
              ["studies"][0]["points"]}
    assert points["snip@s0.95"]["top1"]["sigma_is_fallback"]
    assert points["snip@s0.95"]["top1"]["sigma"] == pytest.approx(D)
    assert points["snip@s0.95"]["top1"]["z"] == pytest.approx(0.5)
    assert not points["dense@s0.00"]["top1"]["sigma_is_fallback"]


def test_without_any_seed_spread_a_difference_is_outside(tmp_path, capsys):
    a = runs_table(seeds=(1,))
    b = runs_table(seeds=(1,))
    b.loc[at(b, "dense", 0.0), "top1"] += 0.001
    code, out = compare(capsys, write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv"))
    assert code == 1
    assert "so σ is unknown: any difference counts as outside" in out
    assert "dense@s0.00 (σ unknown)" in verdicts(out)[0]


def _legacy(frame: pd.DataFrame) -> pd.DataFrame:
    """A runs table as written before the `control` and `series` columns (and without the
    channel target): the label was the series name, the control's method lottery_reinit."""
    old = frame.drop(columns=["control", "series", "channel_sparsity"])
    old["label"] = frame["series"]
    old.loc[frame["control"] == "reinit", "method"] = "lottery_reinit"
    return old[frame["channel_sparsity"].isna()]


def test_an_older_table_compares_with_a_current_one(tmp_path, capsys):
    current = runs_table()
    code, out = compare(capsys, write(_legacy(current), tmp_path / "old.csv"),
                        write(current[current["channel_sparsity"].isna()], tmp_path / "new.csv"))
    assert code == 0
    assert verdicts(out) == ["toy: bit-identical (all 24 rows: " + NO_WEIGHTS]


def test_provenance_is_summarised_per_set(tmp_path, capsys):
    b = runs_table().assign(cpu_model="Test CPU", torch_version="2.13.0", threads=4)
    b.loc[b["seed"] == 2, "cpu_model"] = "Other CPU"
    code, out = compare(capsys, write(runs_table(), tmp_path / "a.csv"),
                        write(b, tmp_path / "b.csv"))
    lines = out.splitlines()
    assert lines[0] == f"A: {tmp_path / 'a.csv'}: provenance not recorded"
    assert lines[1] == (f"B: {tmp_path / 'b.csv'}: made on torch_version 2.13.0, cpu_model "
                        "Other CPU; Test CPU, threads 4")


def test_results_dirs_with_two_studies(tmp_path, capsys):
    for side in ("a", "b"):
        write(runs_table("toy"), tmp_path / side / "studies" / "toy" / "runs.csv")
        other = runs_table("other")
        if side == "b":
            other.loc[at(other, "magnitude", 0.5), "top1"] -= 3 * D
        write(other, tmp_path / side / "studies" / "other" / "runs.csv")
    write(runs_table("only_a"), tmp_path / "a" / "studies" / "only_a" / "runs.csv")

    code, out = compare(capsys, tmp_path / "a", tmp_path / "b", "--max-outside", 0, "--json",
                        tmp_path / "r.json")
    assert code == 1
    assert verdicts(out) == [
        "other: NOT reproduced: 1/9 grid points outside 2σ (at most 0 outside allowed by "
        "--max-outside; 24/27 rows bit-identical): magnitude@s0.50 (-3.0σ)",
        "toy: bit-identical (all 27 rows: " + NO_WEIGHTS]
    assert "Not compared (only in A): only_a" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert [s["study"] for s in result["studies"]] == ["other", "toy"]
    assert result["reproduced"] is False and result["studies_only_in_a"] == ["only_a"]

    code, out = compare(capsys, tmp_path / "a", tmp_path / "b", "--study", "toy",
                        "--max-outside", 0)
    assert code == 0 and verdicts(out) == ["toy: bit-identical (all 27 rows: " + NO_WEIGHTS]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    *args], check=True, capture_output=True)


def test_git_mode_compares_committed_results_with_the_working_tree(tmp_path, capsys,
                                                                  monkeypatch):
    repo = tmp_path / "repo"
    tables = repo / "results" / "studies" / "toy" / "runs.csv"
    write(runs_table(), tables)
    _git(repo, "init", "-q")
    _git(repo, "add", "results")
    _git(repo, "commit", "-qm", "results")
    (repo / "src").mkdir()
    monkeypatch.chdir(repo / "src")  # B defaults to the work tree's results/, from anywhere

    code, out = compare(capsys, "git:HEAD")
    assert code == 0 and verdicts(out) == ["toy: bit-identical (all 27 rows: " + NO_WEIGHTS]
    assert out.startswith("A: git:HEAD (") and f"B: {repo / 'results'}:" in out

    changed = runs_table()
    changed.loc[at(changed, "magnitude+distill", 0.9), "top1"] -= 4 * D
    write(changed, tables)
    code, out = compare(capsys, "git:HEAD", "--max-outside", 0)
    assert code == 1
    assert verdicts(out)[0].endswith("magnitude+distill@s0.90 (-4.0σ)")
    # The git side reads the other side's path as committed, or the path given.
    assert compare(capsys, "git:HEAD", tables.parent, "--max-outside", 0)[0] == 1
    code, out = compare(capsys, "git:HEAD:results/studies/toy/runs.csv", "git:HEAD")
    assert code == 0 and verdicts(out) == ["toy: bit-identical (all 27 rows: " + NO_WEIGHTS]

    code = main(["compare", "git:no-such-rev"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'git:no-such-rev'" in err and "not a commit" in err
    code = main(["compare", "git:HEAD:elsewhere"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'elsewhere' is not committed at HEAD" in err


@pytest.mark.parametrize("argv, names", [
    (["{tmp}/missing.csv", "{tmp}/a.csv"], ["missing.csv", "does not exist"]),
    (["{tmp}/a.csv", "{tmp}/notop1.csv"], ["notop1.csv", "no top1 column"]),
    (["{tmp}/a.csv", "{tmp}/empty.csv"], ["empty.csv", "is empty"]),
    (["{tmp}/a.csv", "{tmp}/nodir"], ["nodir", "holds no runs.csv"]),
    (["{tmp}/a.csv", "{tmp}/other.csv"], ["no study is in both", "A has toy; B has other"]),
    (["{tmp}/a.csv", "{tmp}/a.csv", "--study", "nope"], ["--study 'nope'", "A has toy"]),
    (["{tmp}/a.csv", "{tmp}/a.csv", "--sigma", "0"], ["--sigma", "positive"]),
    (["{tmp}/a.csv", "{tmp}/a.csv", "--max-outside", "-1"], ["--max-outside", ">= 0"]),
    (["git:HEAD", "{tmp}/a.csv"], ["'git:HEAD'", "git repository"]),
])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, monkeypatch, argv, names):
    write(runs_table(), tmp_path / "a.csv")
    write(runs_table().drop(columns=["top1"]), tmp_path / "notop1.csv")
    write(runs_table("other"), tmp_path / "other.csv")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "nodir").mkdir()
    monkeypatch.chdir(tmp_path)  # not in a git repository
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    code = main(["compare", *[a.format(tmp=tmp_path) for a in argv], "--json",
                 str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("prunebench: error:")
    assert all(name in err[-1] for name in names), err[-1]
    assert not (tmp_path / "r.json").exists()
