"""What `mnist-dist train --help` and docs/configuration.md say of every key: its type, default, choices, range,
resume policy and docstring, generated from the config dataclasses (schema), so that the two cannot drift.

    python -m mnist_dist.config --reference > docs/configuration.md
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing

import yaml

from mnist_dist.config.schema import MAY_CHANGE, MUST_MATCH, Config, range_text


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a config dataclass, read from its source (one place only)."""
    class_def = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(class_def, ast.ClassDef)
    body = class_def.body
    return {
        node.target.id: " ".join(doc.value.value.split())
        for node, doc in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(doc, ast.Expr)
        and isinstance(doc.value, ast.Constant)
        and isinstance(doc.value.value, str)
    }


def _type_name(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(a.__name__ for a in args) + (
            " or null" if type(None) in typing.get_args(tp) else ""
        )
    return getattr(tp, "__name__", str(tp))


def resume_text(rule, why: bool = True) -> str:
    """`must match`, `may change (why)`, `must match; may change with ...`: a key's resume policy in words."""
    policy = rule.get("resume", MUST_MATCH)
    if rule.get("may_change_if"):
        return f"{policy}; may change {rule['why']}"
    return f"{policy} ({rule['why']})" if why and rule.get("why") else policy


def describe() -> list[dict]:
    """Every config key: its type, default, choices, range, resume policy and docstring, generated from the
    dataclasses (their field docstrings and rules()): what `train --help` and docs/configuration.md show."""
    rows = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            choices = f.metadata.get("choices")
            if (section.name, f.name) == ("model", "name"):
                from mnist_dist.models import MODELS

                choices = tuple(sorted(MODELS))
            rows.append(
                {
                    "key": f"{section.name}.{f.name}",
                    "type": _type_name(hints[f.name]),
                    "default": default,
                    "default_text": yaml.safe_dump(default, default_flow_style=True)
                    .strip()
                    .removesuffix("...")
                    .strip(),
                    "choices": choices,
                    "range": range_text(f.metadata.get("range") or {}),
                    "resume": f.metadata.get("resume", MUST_MATCH),
                    "resume_text": resume_text(f.metadata, why=False),
                    "resume_why": resume_text(f.metadata),
                    "doc": docs.get(f.name, ""),
                }
            )
    return rows


def help_text(width: int = 100) -> str:
    """The config keys, for `mnist-dist train --help`."""
    lines = ["config keys (defaults < --config YAML or recipe < key=value overrides):"]
    for row in describe():
        choices = f": {' | '.join(row['choices'])}" if row["choices"] else ""
        lines.append(f"  {row['key']} = {row['default_text']}   ({row['type']}{choices})")
        policy = "; ".join(
            ([f"range {row['range']}"] if row["range"] else [])
            + [f"on resume: {row['resume_text']}"]
        )
        lines += textwrap.wrap(
            f"{row['doc']} [{policy}]",
            width,
            initial_indent="      ",
            subsequent_indent="      ",
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def reference() -> str:
    """docs/configuration.md: every key as `train --help` lists it (describe()), as a Markdown page."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from mnist_dist/config/schema.py by `python -m mnist_dist.config --reference > "
        "docs/configuration.md`: edit the field docstrings and rules() there, not this page "
        "(tests/integration/test_docs.py checks it). -->",
        "",
        "Every config key, with its type, default, allowed values, range, what a resume may do with it, and the "
        "docstring written under its field in `mnist_dist/config/schema.py`; `mnist-dist train --help` prints the "
        "same rows. Values merge as defaults < `--config` YAML or recipe < `key=value` overrides.",
        "",
        "**On resume:** a key that *must match* shapes the run's numbers, so a resume that changes it is "
        "refused in one line naming the old and new value; one that *may change* is honoured, and the run "
        "folder's `config.yaml` records the new value (see [Resuming](resuming.md)).",
        "",
    ]
    rows = describe()
    out += [
        "## What a resume may change",
        "",
        "May change: "
        + ", ".join(f"`{r['key']}`" for r in rows if r["resume"] == MAY_CHANGE)
        + ".",
        "",
        "Must match, with a condition under which it may change: "
        + "; ".join(
            f"`{r['key']}` ({r['resume_why'].split('; ', 1)[1]})"
            for r in rows
            if ";" in r["resume_text"]
        )
        + ".",
        "",
        "Every other key must match.",
        "",
    ]
    section = None
    for row in rows:
        if row["key"].split(".")[0] != section:
            section = row["key"].split(".")[0]
            out += [f"## {section}", ""]
        facts = [f"`{row['type']}`", f"default `{row['default_text']}`"]
        if row["choices"]:
            facts.append("one of " + ", ".join(f"`{c}`" for c in row["choices"]))
        if row["range"]:
            facts.append(f"range {row['range']}")
        facts.append(f"on resume: {row['resume_why']}")
        out += [f"### `{row['key']}`", "", " · ".join(facts), ""] + (
            [row["doc"], ""] if row["doc"] else []
        )
    return "\n".join(out).rstrip() + "\n"
