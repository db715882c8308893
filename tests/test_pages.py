"""Results pages (`prunebench.analysis.pages`) and the papers a study declares
(`prunebench.papers`): the comparison with a paper is computed from the tables, how a study
was made comes from the workflow's records, the README's block and the docs' pages are what
the generator makes from the committed tables, and bad `papers:` entries stop at parsing."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from prunebench.analysis.aggregate import headline_metrics, read_tables, write_tables
from prunebench.analysis.pages import (
    BEGIN,
    END,
    readme_block,
    render_page,
    update_readme,
)
from prunebench.errors import ConfigError
from prunebench.papers import Paper, PaperValue
from prunebench.study import load_study, parse_study
from test_checklist import STUDY, _runs

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "results" / "studies"
PAGES = ROOT / "docs" / "results"


@pytest.fixture
def tables(tmp_path) -> Path:
    from prunebench.analysis.aggregate import summarise

    runs = _runs()
    out = tmp_path / "results" / "studies" / STUDY
    write_tables(runs, summarise(runs), out)
    return out


def _table_row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def test_the_paper_comparison_is_computed_from_the_tables(tables, tmp_path):
    runs, summary = read_tables(tables)
    paper = Paper(cite="Someone et al. 2020", metric="error", url="https://example.org",
                  values=(PaperValue("dense", None, 5.0), PaperValue("snip", 0.75, 10.0),
                          PaperValue("global_magnitude", 0.5, 3.0)),
                  claims=("It works.",))
    page = render_page(tables, tmp_path / "plots", tmp_path / "docs/results/toy.md", STUDY,
                       papers=[paper])
    assert "### Compared with [Someone et al. 2020](https://example.org)" in page
    for series, sparsity, theirs, point in (("dense", None, 5.0, "dense"),
                                            ("snip", 0.75, 10.0, "snip at 0.75"),
                                            ("global_magnitude", 0.5, 3.0,
                                             "global_magnitude at 0.5")):
        rows = runs[runs["series"] == series]
        if sparsity is not None:
            rows = rows[(rows["target_sparsity"] - sparsity).abs() < 1e-9]
        errors = 100 * (1 - rows["top1"])
        cells = _table_row(page, point)
        assert cells[1] == f"{theirs:g}"
        assert cells[2] == f"{errors.mean():.2f} ± {errors.std(ddof=1):.2f}"
        assert cells[3] == f"{errors.mean() - theirs:+.2f}"
        assert cells[4] == str(len(rows))
    assert "- It works." in page


def test_how_it_was_made_comes_from_the_workflow_record(tables, tmp_path):
    made = {"command": "snakemake --cores 2 --config only=toy", "elapsed_s": 3725.0,
            "elapsed_method": "first to last", "job_wall_s_total": 7000.0, "jobs": 12,
            "startup_share": 0.05}
    page = render_page(tables, tmp_path, tmp_path / "docs/results/toy.md", STUDY, made)
    section = page.split("## How it was made", 1)[1].split("\n## ", 1)[0]
    assert "`snakemake --cores 2 --config only=toy`" in section
    assert "1 h 02 min" in section and "1 h 56 min summed over 12 jobs" in section
    unrecorded = render_page(tables, tmp_path, tmp_path / "docs/results/toy.md", STUDY, None)
    assert "not recorded" in unrecorded.split("## How it was made", 1)[1].split("\n## ")[0]


def test_figures_are_linked_through_the_docs_and_only_those_that_exist(tables, tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / f"{STUDY}_accuracy_vs_params.png").write_bytes(b"png")
    page = render_page(tables, plots, tmp_path / "docs/results/toy.md", STUDY)
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)
    assert links == [f"../plots/{STUDY}_accuracy_vs_params.png"]
    # repository files outside docs/ are named, not linked (MkDocs' strict mode refuses those)
    assert not re.search(r"\]\((?!\.\./plots/|https?://)[^)]*\)", page)


def test_the_headline_counts_channels_cut_out_as_removed():
    metrics = headline_metrics(_summary())
    l1 = metrics[STUDY]["l1_filter"]
    assert l1["c0.50"]["params_removed"] == pytest.approx(1 - 0.5 ** 2)
    assert metrics[STUDY]["global_magnitude"]["s0.50"]["params_removed"] == pytest.approx(0.5)


def _summary():
    from prunebench.analysis.aggregate import summarise

    return summarise(_runs())


def test_the_readme_block_is_replaced_and_a_second_run_changes_nothing(tables, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{BEGIN}\nold numbers\n{END}\n\nafter\n")
    pages = tmp_path / "docs" / "results"
    pages.mkdir(parents=True)
    (pages / f"{STUDY}.md").write_text("# toy\n")
    assert update_readme(readme, tables.parent, pages)
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# x\n\nbefore\n")
    assert text.endswith(f"{END}\n\nafter\n")
    assert f"[{STUDY}](docs/results/{STUDY}.md)" in text
    assert not update_readme(readme, tables.parent, pages)
    readme.write_text("# no block\n")
    with pytest.raises(ConfigError, match="results:begin"):
        update_readme(readme, tables.parent, pages)


# ---------------------------------------------------------------- the committed pages


def _committed_studies() -> list[str]:
    return sorted(p.name for p in STUDIES.iterdir() if (p / "summary.csv").is_file())


@pytest.mark.parametrize("study", _committed_studies())
def test_committed_pages_are_what_the_workflow_writes(study, monkeypatch):
    """No number on a results page is typed by hand: each committed page is exactly what
    `prunebench page` makes from the committed tables (the workflow's rule page, run from
    the project root as the workflow runs it)."""
    from prunebench.analysis.pages import read_granularity

    monkeypatch.chdir(ROOT)
    tables, page = Path("results/studies") / study, Path("docs/results") / f"{study}.md"
    assert page.is_file(), f"{page} is missing: run the workflow, or scripts/reanalyse.sh"
    expected = render_page(tables, Path("results/plots"), page, study,
                           read_granularity(tables / "granularity.json"),
                           load_study("params.yaml", study).papers)
    assert page.read_text() == expected, f"{page} differs from what the workflow writes"


def test_the_committed_readme_block_is_what_the_workflow_writes():
    text = (ROOT / "README.md").read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block == "\n" + readme_block(STUDIES, PAGES, ROOT)
    for study in _committed_studies():
        assert f"(docs/results/{study}.md)" in block


# ---------------------------------------------------------------- papers: checked at parsing


TINY = {
    "data": {"name": "digits", "val_size": 0.1},
    "model": {"name": "mlp_digits"},
    "train": {"epochs": 1},
    "methods": {"global_magnitude": {}, "l1_filter": {}},
    "sparsities": [0.5, 0.8],
    "channel_sparsities": [0.25, 0.5],
}
GOOD = {"cite": "A 2020", "values": [{"series": "dense", "value": 98.0},
                                      {"series": "global_magnitude", "sparsity": 0.8,
                                       "value": 97.0},
                                      {"series": "l1_filter", "sparsity": 0.5, "value": 96.0}]}


def _with_paper(**edits) -> dict:
    study = copy.deepcopy(TINY)
    paper = {**copy.deepcopy(GOOD), **edits}
    study["papers"] = [{k: v for k, v in paper.items() if v is not None}]
    return study


def test_a_good_declaration_parses():
    papers = parse_study("s", _with_paper(metric="top1", claims=["x"])).papers
    assert papers[0].values[1] == PaperValue("global_magnitude", 0.8, 97.0)
    assert papers[0].claims == ("x",)


@pytest.mark.parametrize("edits, key", [
    ({"values": [{"series": "snip", "sparsity": 0.8, "value": 1}]},
     "studies.s.papers[0].values[0].series"),
    ({"values": [{"series": "global_magnitude", "sparsity": 0.9, "value": 1}]},
     "studies.s.papers[0].values[0].sparsity"),
    ({"values": [{"series": "l1_filter", "sparsity": 0.8, "value": 1}]},
     "studies.s.papers[0].values[0].sparsity"),  # a channel target, not a weight one
    ({"values": [{"series": "dense", "value": 101}]}, "studies.s.papers[0].values[0].value"),
    ({"values": [{"series": "dense", "sparsity": 0.5, "value": 1}]},
     "studies.s.papers[0].values[0].sparsity"),
    ({"values": [{"series": "dense", "value": 1}, {"series": "dense", "value": 2}]},
     "studies.s.papers[0].values"),
    ({"cite": ""}, "studies.s.papers[0].cite"),
    ({"metric": "top5"}, "studies.s.papers[0].metric"),
    ({"values": []}, "studies.s.papers[0]"),
    ({"year": 2020}, "studies.s.papers[0].year"),
])
def test_bad_declarations_stop_at_parsing_naming_the_key(edits, key):
    with pytest.raises(ConfigError) as err:
        parse_study("s", _with_paper(**edits))
    assert key in str(err.value), str(err.value)
