"""MkDocs hooks of prunebench's documentation (mkdocs.yml `hooks:`; not a page: mkdocs.yml's
`exclude_docs` keeps this folder out of the site).

- The reference pages are generated on every build from the code (`prunebench.docs`):
  `reference/methods.md` from the method registry, `reference/options.md` from the params
  schema. They are never committed, so they cannot drift; a committed copy is refused.
- The nav section that lists `results/index.md` also gets every other page under
  `docs/results/` (the study pages the workflow's report stage writes), sorted by path, so
  a new study's page needs no edit of mkdocs.yml and `validation.nav.omitted_files: warn`
  still fails the strict build on any other page left out of the nav.
- `mkdocs serve` also watches the package's source, so an edited method or option shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

AUTO_SECTIONS = ("results",)  # folders whose pages join the nav section of their index.md


def _docs_module():
    try:
        from prunebench import docs
    except ImportError:  # a checkout without the package installed: use its source
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
        try:
            from prunebench import docs
        except ImportError as err:
            raise PluginError(f"the reference pages need prunebench and its dependencies "
                              f"(`make install`): {err}") from None
    return docs


def on_files(files, config):
    docs = _docs_module()
    for path, render in docs.PAGES.values():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} is generated when the documentation is built "
                              "(prunebench.docs); remove the committed file")
        files.append(File.generated(config, path, content=render()))
    if config.nav is not None:
        _complete_sections(config.nav, files)
    return files


def on_serve(server, config, builder):
    server.watch(str(Path(_docs_module().__file__).parent))
    return server


def _mentioned(nav) -> set[str]:
    out: set[str] = set()
    for item in nav if isinstance(nav, list) else [nav]:
        if isinstance(item, str):
            out.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                out |= _mentioned(value)
    return out


def _complete_sections(nav, files) -> None:
    """Append to the nav list holding `<folder>/index.md` (as a page or a titled page) the
    other pages under the folder that the nav does not mention yet."""
    mentioned = _mentioned(nav)
    pages = sorted(f.src_uri for f in files.documentation_pages())

    def visit(items) -> None:
        if not isinstance(items, list):
            return
        for folder in AUTO_SECTIONS:
            index = f"{folder}/index.md"
            if any(item == index or (isinstance(item, dict) and index in item.values())
                   for item in items):
                items += [p for p in pages
                          if p.startswith(f"{folder}/") and p not in mentioned]
        for item in items:
            if isinstance(item, dict):
                for value in item.values():
                    visit(value)

    visit(nav)
