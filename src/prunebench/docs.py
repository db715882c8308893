"""The documentation's reference pages, generated from the code so that they cannot drift.

- `methods_markdown()`: every method the package registers (`prunebench.pruning.METHODS`):
  what it is (its module's and its function's docstrings), structured or unstructured, when
  it prunes, what it needs, and its declared options (`prunebench.options.Option`: allowed
  values, default, help), plus the recovery variants a study can ask for;
- `options_markdown()`: every key of the params file and of a study, rendered from the JSON
  Schema that `prunebench schema` prints (`prunebench.study.json_schema`), which is itself
  generated from the config dataclasses and the declared options.

The MkDocs build (mkdocs.yml, `docs/hooks/reference.py`) calls both on every build, so the
pages are never committed; `prunebench docs methods|options` prints them. A plugin's methods
are documented by the plugin, as in the schema: only the package's own entries are listed.

This module imports no MkDocs: the pages are plain Markdown (tables, headings, code spans).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import typing
import unicodedata
from collections.abc import Mapping
from typing import Any

METHODS_PAGE = "reference/methods.md"
OPTIONS_PAGE = "reference/options.md"
STUDY_SECTION = "Study keys"  # the options page's heading of a study's keys

_WHEN = {
    "trained": "one shot on the trained dense model; the pruned network then recovers as the "
               "study's `recover` says",
    "init": "at initialisation: the sparse network then trains from scratch with the "
            "study's `train` recipe",
    "iterative": "its own loop of pruning, rewinding and retraining (the lottery stage)",
    "during_training": "inside one training run from the initialisation: the mask changes "
                       "as the network trains",
}


# ----------------------------------------------------------------------------- helpers


def slug(text: str) -> str:
    """The anchor MkDocs' `toc` extension gives a heading (its default `slugify`)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line ("" when there is none)."""
    doc = inspect.cleandoc(doc or "")
    return " ".join(doc.split("\n\n")[0].split()) if doc.strip() else ""


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(value: Any) -> str:
    """A default as it is written in params.yaml (JSON, which YAML reads the same)."""
    if isinstance(value, tuple):
        value = list(value)
    return f"`{_cell(json.dumps(value))}`"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _class_doc(cls: Any) -> str:
    """A config dataclass's own docstring (not the signature dataclasses make up)."""
    doc = first_paragraph(getattr(cls, "__doc__", None))
    return "" if doc.startswith(f"{getattr(cls, '__name__', '')}(") else doc


# ----------------------------------------------------------------------------- methods


def own_methods() -> list[tuple[str, Any]]:
    """(name, PruningMethod) of every method the package itself registers, sorted."""
    from prunebench.pruning import METHODS

    return [(name, m) for name, m in METHODS.items() if METHODS.origin(name) is None]


def option_rows(options: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Table rows of declared `Option`s: name, allowed values, default, help."""
    return [(f"`{name}`", opt.allowed(), _value(opt.default), opt.help or "")
            for name, opt in options.items()]


def _method_facts(method: Any) -> list[str]:
    if method.structured:
        kind = ("**structured**: removes whole channels (conv filters, linear units) from the "
                "model; its targets are the study's `channel_sparsities`")
    else:
        kind = ("**unstructured**: a mask over the Conv2d and Linear weights; its targets are "
                "the study's `sparsities`")
    facts = [f"Kind: {kind}.", f"When: {_WHEN.get(method.when, method.when)}."]
    if method.needs_data:
        facts.append("Needs calibration data: the study's `calibration_batches` batches of "
                     "the training split.")
    if method.fixed_sparsity is not None:
        facts.append("Its options fix its sparsity: it runs at that one target, whatever the "
                     "study's grid.")
    if method.uses_sensitivity:
        facts.append("Reads a sensitivity run of the same dense model (made for it).")
    if method.pretrain is not None:
        facts.append("Trains a dense model of its own first (its options change the recipe).")
    if method.rounds is not None:
        facts.append("Can prune in several rounds, fine-tuning between them (its options).")
    if method.version > 1:
        facts.append(f"Version {method.version}: its runs' names carry it, so runs of an "
                     "older version are never reused as if new.")
    return facts


def methods_markdown() -> str:
    """The methods page: an index, then every method with its declared options."""
    from prunebench.config import Study
    from prunebench.study import RECOVERY_VARIANTS

    methods = own_methods()
    lines = [
        "# Methods",
        "",
        ("*Generated from the method registry (`prunebench.pruning.METHODS`) each time the "
         "documentation is built, so it lists what the code registers. "
         "`prunebench docs methods` prints this page.*"),
        "",
        ("A study lists its methods under `methods:`, each under a label of its own with the "
         "options it changes; `method:` names the registry entry when the label is not its "
         "name, so one method can appear twice with different options. An option left out "
         "takes its default, and only options that differ from their defaults enter a run's "
         "name. Every value is checked against the declarations below when the params file "
         "is parsed, before any work."),
        "",
        "```yaml",
        "methods:",
        "  global_magnitude:            # a label that is a method's name",
        "  l1_filter_l2:                # a label of your own",
        "    method: l1_filter",
        "    norm: 2",
        "```",
        "",
        "| method | kind | when | summary |",
        "|---|---|---|---|",
    ]
    for name, m in methods:
        kind = "structured" if m.structured else "unstructured"
        summary = first_paragraph(m.fn.__doc__) or first_paragraph(
            sys.modules[m.fn.__module__].__doc__)
        lines.append(f"| [`{name}`](#{slug(name)}) | {kind} | {m.when} | {_cell(summary)} |")
    for name, m in methods:
        module = sys.modules.get(m.fn.__module__)
        lines += ["", f"## {name}", ""]
        about = [first_paragraph(getattr(module, "__doc__", None)), first_paragraph(m.fn.__doc__)]
        for paragraph in dict.fromkeys(p for p in about if p):  # distinct, in order
            lines += [paragraph, ""]
        lines += [f"- {fact}" for fact in _method_facts(m)]
        lines.append(f"- Source: `{m.fn.__module__}`.")
        lines.append("")
        if m.options:
            lines += _table(("option", "allowed values", "default", "description"),
                            option_rows(m.options))
        else:
            lines.append("No options.")
    from prunebench.study import json_schema

    hints = typing.get_type_hints(Study)
    study_keys = json_schema()["properties"]["studies"]["additionalProperties"]["properties"]
    lines += [
        "",
        "## Recovery variants",
        "",
        ("How pruned networks recover is the study's `recover` list, not a method's option "
         f"([study keys]({_options_link(STUDY_SECTION)})); each variant has its own settings."),
        "",
        "| variant | settings | what it is |",
        "|---|---|---|",
    ]
    for variant in RECOVERY_VARIANTS:
        cls = hints.get(variant)
        about = study_keys.get(variant, {}).get("description") or _class_doc(cls)
        settings = (f"[`{variant}`]({_options_link(variant)})" if variant in study_keys
                    else "")
        lines.append(f"| `{variant}` | {settings} | {_cell(about)} |")
    return "\n".join(lines) + "\n"


def _options_link(key: str) -> str:
    return f"options.md#{slug(key)}"


# ----------------------------------------------------------------------------- options


def _interval(schema: Mapping[str, Any]) -> str:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if low is None and high is None:
        return ""
    lo = "(" if "exclusiveMinimum" in schema else "["
    hi = ")" if "exclusiveMaximum" in schema else "]"
    low = "-inf" if low is None else f"{low:g}"
    high = "inf" if high is None else f"{high:g}"
    return f" in {lo}{low}, {high}{hi}"


_JSON_TYPES = {"boolean": "true or false", "integer": "an integer", "number": "a number",
               "string": "a string", "null": "null", "object": "a mapping",
               "array": "a list"}


def schema_type(schema: Mapping[str, Any]) -> str:
    """What a JSON Schema fragment admits, in the words of `Option.allowed`."""
    if "enum" in schema:
        return "one of " + ", ".join("null" if v is None else str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(dict.fromkeys(schema_type(s) for s in schema["anyOf"]))
    kinds = schema.get("type")
    if kinds is None:
        return "any value"
    if isinstance(kinds, list):
        return " or ".join(schema_type({**schema, "type": k}) for k in kinds)
    if kinds == "array":
        items = schema.get("items")
        if isinstance(items, Mapping) and "properties" in items:
            text = "a list of mappings"
        elif isinstance(items, Mapping) and "enum" in items:
            text = "a list of values from " + schema_type(items).removeprefix("one of ")
        elif isinstance(items, Mapping) and items:
            text = "a list of " + re.sub(r"^an? (integer|number|string)", r"\1s",
                                         schema_type(items))
        else:
            text = "a list"
        if schema.get("minItems"):
            text += f" with at least {schema['minItems']} item(s)"
        return text
    if kinds == "object" and "additionalProperties" in schema and not schema.get("properties"):
        return "a mapping"
    return _JSON_TYPES.get(kinds, kinds) + _interval(schema)


def _nested(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object schema with keys of its own that a property holds, if any (a section,
    a mapping-or-null, or a list of mappings)."""
    if schema.get("properties"):
        return schema
    for part in schema.get("anyOf", ()):
        if part.get("properties"):
            return part
    items = schema.get("items")
    if isinstance(items, Mapping) and items.get("properties"):
        return items
    return None


def _default(schema: Mapping[str, Any], required: bool) -> str:
    if "default" in schema:
        return _value(schema["default"])
    return "required" if required else ""


def _render_section(title: str, schema: Mapping[str, Any], intro: str,
                    seen: dict[str, str], out: list[str], level: int) -> None:
    """A heading, an intro and a table of `schema`'s keys; keys holding mappings of their
    own get sections after it, named by their path in a study (`model.checkpoint`, or
    `budgets[]` for a list's items)."""
    props = schema["properties"]
    required = set(schema.get("required", ()))
    out += ["", f"{'#' * level} {title}", ""]
    if intro:
        out += [intro, ""]
    signature = json.dumps(props, sort_keys=True, default=str)
    if signature in seen:  # `finetune` holds the keys of `train`
        out.append(f"The keys of [`{seen[signature]}`](#{slug(seen[signature])}).")
        return
    seen[signature] = title
    rows, later = [], []
    for key, sub in props.items():
        nested = _nested(sub)
        about = sub.get("description", "")
        if nested is not None:
            name = key if title == STUDY_SECTION else f"{title}.{key}"
            if nested is sub.get("items"):
                name += "[]"
            about = (about + " " if about else "") + f"(keys: [`{name}`](#{slug(name)}))"
            later.append((name, nested, sub.get("description", "")))
        rows.append((f"`{key}`", schema_type(sub), _default(sub, key in required), about))
    out += _table(("key", "allowed values", "default", "description"), rows)
    for name, nested, about in later:
        _render_section(name, nested, about or _section_intro(name), seen, out, 3)


def _section_intro(name: str) -> str:
    """The docstring of the config dataclass a study key holds (`distill`: DistillConfig)."""
    from prunebench.config import Study

    hints = typing.get_type_hints(Study)
    cls = hints.get(name)
    return _class_doc(cls) if dataclasses.is_dataclass(cls) else ""


def options_markdown() -> str:
    """The options page: every key of the params file and of a study, from the schema."""
    from prunebench.study import json_schema

    schema = json_schema()
    top = schema["properties"]
    study = top["studies"]["additionalProperties"]
    study = {**study, "properties": dict(study["properties"])}
    methods = study["properties"]["methods"]
    study["properties"]["methods"] = {
        **methods, "description": "label -> options; `method:` names the registry entry "
        "(default: the label); each method's options are on the "
        "[methods page](methods.md)"}
    lines = [
        "# Options",
        "",
        ("*Generated from the params file's JSON Schema (`prunebench schema`, itself generated "
         "from the config dataclasses and the declared options) each time the documentation "
         "is built. `prunebench docs options` prints this page.*"),
        "",
        ("Every value is checked when the params file is parsed, so a bad one stops "
         "`prunebench plan`, `snakemake -n` and every CLI verb before any work, with one line "
         "naming the key and what is allowed. A value equal to its default is left out of run "
         "names, so adding a key with a default keeps old runs valid."),
        "",
        "## The params file",
        "",
    ]
    rows = []
    for key, sub in top.items():
        about = sub.get("description", "")
        if key == "studies":
            about = f"study name -> study ([the keys of a study](#{slug(STUDY_SECTION)}))"
        rows.append((f"`{key}`", schema_type(sub) if key != "studies" else "a mapping",
                     _default(sub, key in schema.get("required", ())), about))
    lines += _table(("key", "allowed values", "default", "description"), rows)
    seen: dict[str, str] = {}
    _render_section(STUDY_SECTION, study, "The keys of one study, `studies.<name>`. A key "
                    "holding a mapping of its own has a section below.", seen, lines, 2)
    return "\n".join(lines) + "\n"


PAGES = {"methods": (METHODS_PAGE, methods_markdown), "options": (OPTIONS_PAGE, options_markdown)}

__all__ = ["METHODS_PAGE", "OPTIONS_PAGE", "PAGES", "first_paragraph", "methods_markdown",
           "option_rows", "options_markdown", "own_methods", "schema_type", "slug"]
