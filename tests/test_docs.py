"""The documentation builds strictly, its generated reference pages list what the code
declares, and strictness bites.

- The committed tree (mkdocs.yml, docs/) builds with `mkdocs build --strict`: no broken
  link or anchor, no missing page, no page left out of the nav.
- The methods page (generated on every build by docs/hooks/reference.py from
  `prunebench.docs`) has every method the package registers with each declared option, its
  allowed values and default; the options page has every key of the params file and of a
  study, and every field of the study's sections. Both are compared with the registry and
  the schema here, so a generator that drops one fails.
- A copy of docs/ with broken links injected (a missing page, a file outside docs/, a
  missing anchor, a missing image) and a page left out of the nav fails to build, naming
  each; a new study page under results/ in the same copy joins the nav by itself.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from prunebench.docs import STUDY_SECTION, methods_markdown, options_markdown, own_methods, slug
from prunebench.options import Option

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    assert importlib.util.find_spec("mkdocs"), "MkDocs is missing: `make install` installs " \
        "the `docs` extra"
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=240,
                          check=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    result = mkdocs_build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return out


def _sections(markdown: str, level: str = "## ") -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading of the same level."""
    parts = re.split(rf"^{level}(.+)$", markdown, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def _row(body: str, name: str) -> str:
    rows = [line for line in body.splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"no single table row for `{name}`:\n{body}"
    return rows[0]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# ----------------------------------------------------------------------------- the build


def test_the_committed_docs_build_strictly(site):
    for page in ("index.html", "design/index.html", "running/index.html",
                 "bring-your-own/index.html", "benchmark/index.html",
                 "reproducibility/index.html", "reference/methods/index.html",
                 "reference/options/index.html", "results/index.html"):
        assert (site / page).is_file(), page
    assert not (site / "hooks").exists()  # the build's hook is not a page of the site
    nav = (site / "index.html").read_text()
    for study_page in sorted((ROOT / "docs/results").glob("*.md")):
        if study_page.name != "index.md":  # every study page is in the nav
            assert f'results/{study_page.stem}/"' in nav, study_page.name


def test_the_methods_page_lists_every_method_and_option(site):
    built = html.unescape((site / "reference/methods/index.html").read_text())
    sections = _sections(methods_markdown())
    methods = own_methods()
    assert methods, "no method registered"
    for name, method in methods:
        assert f'id="{slug(name)}"' in built, f"{name}: no section in the built page"
        body = sections.get(name)
        assert body is not None, f"method {name} is missing from the methods page"
        assert ("**structured**" in body) == method.structured, name
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        assert len(rows) == len(method.options), f"{name}: options {list(method.options)}"
        for option, declared in method.options.items():
            assert isinstance(declared, Option)
            row = _row(body, option)
            assert _cell(declared.allowed()) in row, (name, option, row)
            assert _cell(declared.help) in row, (name, option, row)
            default = list(declared.default) if isinstance(declared.default, tuple) \
                else declared.default
            assert f"`{_cell(json.dumps(default))}`" in row, (name, option, row)
            assert f"<code>{option}</code>" in built, (name, option)


def test_the_options_page_lists_every_key():
    from prunebench.config import Study
    from prunebench.study import STUDY_KEYS, TOP_KEYS, json_schema

    page = options_markdown()
    top, rest = page.split(f"\n## {STUDY_SECTION}\n", 1)
    for key in TOP_KEYS:
        _row(top, key)
    sections = _sections("## " + STUDY_SECTION + "\n" + rest.split("\n### ", 1)[0])
    for key in STUDY_KEYS:
        _row(sections[STUDY_SECTION], key)
    subsections = _sections(rest, "### ")
    hints = typing.get_type_hints(Study)
    schema = json_schema()["properties"]["studies"]["additionalProperties"]["properties"]
    for key, cls in hints.items():
        if not dataclasses.is_dataclass(cls) or key not in schema:
            continue
        body = subsections[key]
        if "The keys of [" in body:  # finetune: the keys of train
            body = subsections[re.search(r"The keys of \[`(\w+)`\]", body).group(1)]
        for f in dataclasses.fields(cls):
            row = _row(body, f.name)
            if f.default is not dataclasses.MISSING:
                default = list(f.default) if isinstance(f.default, tuple) else f.default
                assert f"`{_cell(json.dumps(default))}`" in row, (key, f.name, row)
    for name in schema["budgets"]["items"]["properties"]:
        _row(subsections["budgets[]"], name)
    assert "](methods.md)" in sections[STUDY_SECTION]  # the methods row links to its page


def test_the_cli_prints_the_reference_pages(capsys):
    from prunebench.cli import main

    assert main(["docs", "methods"]) == 0
    assert capsys.readouterr().out == methods_markdown()
    assert main(["docs", "options"]) == 0
    assert capsys.readouterr().out == options_markdown()


# ----------------------------------------------------------------------------- strictness


def _copy_docs(dest: Path) -> Path:
    """mkdocs.yml and docs/ copied to `dest`; symlinks (docs/plots) point at the originals."""
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", dest / "docs", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in (dest / "docs").rglob("*"):
        if path.is_symlink():
            original = ROOT / path.relative_to(dest)
            path.unlink()
            path.symlink_to(original.resolve(), target_is_directory=original.is_dir())
    return dest / "mkdocs.yml"


def test_strict_mode_bites(tmp_path):
    config = _copy_docs(tmp_path)
    docs = tmp_path / "docs"
    (docs / "results").mkdir(exist_ok=True)
    (docs / "results" / "a_new_study.md").write_text(
        "# a_new_study\n\nIts methods: [l1_filter](../reference/methods.md#l1_filter).\n")
    broken = {
        "no-such-page.md": "no-such-page.md",
        "a file outside docs/": "../pyproject.toml",
        "a missing anchor": "reference/methods.md#no-such-method",
        "a missing image": "plots/no-such-plot.png",
    }
    with (docs / "index.md").open("a") as page:
        page.write("\n\n" + "\n".join(f"[{text}]({target})" for text, target in
                                       broken.items()) + "\n")
    (docs / "orphan.md").write_text("# Not in the nav\n")
    result = mkdocs_build(config, tmp_path / "site")
    assert result.returncode != 0, "the strict build passed with broken links"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    for target in broken.values():
        assert any(f"'{target}'" in w for w in warnings), (target, result.stderr)
    assert "not included in the \"nav\"" in result.stderr and "- orphan.md" in result.stderr
    assert not any("a_new_study" in w for w in warnings), result.stderr
    assert len(warnings) == len(broken) + 1, result.stderr
