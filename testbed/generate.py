"""The files that repeat the declarations, generated from them.

``python -m testbed.generate`` rewrites them; ``python -m testbed.generate --check``
exits 1 naming each one that has drifted (the test suite runs it):

- ``charts/values.yaml``: the ``workload`` block (every option whose chart value lives
  under ``workload``, with its default and help);
- ``charts/values.schema.json``: the schema of every option's chart value (type, range,
  choices; unknown ``workload`` keys are rejected), and the pattern of a link rate
  (``$defs.rate``, ``$defs.rates``: ``--bandwidth``'s units, ``testbed.links.values``);
- ``charts/templates/configmap.yaml``: every chart value the programs read, as their
  ``SPLITTEST_*`` environment variables;
- ``README.md``: the tables of ``testbed run``'s options, of the modules, of the link profiles, of
  the figures of a run (``analysis/figures.py``), of the exit statuses (``testbed/errors.py``,
  ``workloads/errors.py``) and of the trace events (``workloads/events.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workloads import settings
from workloads.compression import modules
from workloads.compression.registry import readers
from workloads.settings import Option

from .links.values import RATE_UNITS
from .options import options, run_options

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts"
BEGIN, END = "generated from the declarations by python -m testbed.generate", "end of generated"
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def chart_options() -> list[Option]:
    return [o for o in options() if o.chart]


def yaml_scalar(value) -> str:
    return json.dumps(value)  # JSON scalars are YAML scalars


def values_block() -> str:
    """The ``workload:`` section of values.yaml."""
    lines = ["workload:"]
    for option in chart_options():
        if option.chart.startswith("workload."):
            who = f"{', '.join(readers(option))}: " if option.group == "knob" else ""
            valid = option.describe_range()
            comment = f"{who}{option.help}" + (f" ({valid})" if valid else "")
            lines.append(f"  {option.chart.split('.', 1)[1]}: {yaml_scalar(option.default)}  # {comment}")
    return "\n".join(lines) + "\n"


def json_schema(option: Option) -> dict:
    if option.chart_schema is not None:
        return dict(option.chart_schema)
    schema: dict = {"type": JSON_TYPES[option.type], "description": option.help}
    allowed = option.allowed()
    if allowed is not None:
        schema["enum"] = allowed
    if option.positive:
        schema["exclusiveMinimum"] = 0
    if option.min is not None:
        schema["minimum"] = option.min
    if option.max is not None:
        schema["maximum"] = option.max
    return schema


def schema_with_options(schema: dict) -> dict:
    """``schema`` with every option's chart value (the ``workload`` object wholly)."""
    schema = json.loads(json.dumps(schema))
    props = schema.setdefault("properties", {})
    props["workload"] = {"type": "object", "additionalProperties": False,
                         "description": "the workload: the same settings as testbed run", "properties": {}}
    for option in chart_options():
        *parents, leaf = option.chart.split(".")
        node = schema
        for key in parents:
            node = node.setdefault("properties", {}).setdefault(key, {"type": "object", "properties": {}})
        node.setdefault("properties", {})[leaf] = json_schema(option)
    schema.setdefault("$defs", {}).update(rate_schemas())
    return schema


def rate_schemas() -> dict[str, dict]:
    """The chart's link rates (``link.bandwidth``, ``link.perSource``): ``--bandwidth``'s
    syntax, with its units in any case, as the parser (``parse_rate``) takes them."""
    units = "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in unit)
                     for unit in sorted(RATE_UNITS, key=lambda u: (-len(u), u)))
    rate = rf"[0-9]*\.?[0-9]+({units})"
    return {"rate": {"type": "string", "pattern": f"^({rate})?$",
                     "description": f"a rate: a number and a unit ({', '.join(RATE_UNITS)}; bps: bytes/s), "
                                    "\"\": not shaped"},
            "rates": {"type": "string", "pattern": f"^({rate}(/{rate})?)?$",
                      "description": "RATE both ways or UP/DOWN (5mbit, 2mbit/20mbit), \"\": not shaped"}}


def configmap() -> str:
    """The ConfigMap: the chart values the programs read, as their environment."""
    input_only = " ".join(json.dumps(m.name) for m in modules() if m.input_only)
    lines = ["# Generated from the option declarations (workloads/settings.py, workloads/adapt.py, the modules' knobs) by",
             "# python -m testbed.generate: do not edit. The run spec, as the programs' environment.",
             "apiVersion: v1", "kind: ConfigMap", "metadata:",
             '  name: {{ include "splittest.fullname" . }}-spec', "  labels:",
             '    {{- include "splittest.labels" . | nindent 4 }}', "data:"]
    for option in chart_options():
        if not set(option.roles) & set(settings.PROGRAMS):
            continue
        ref = f".Values.{option.chart}"
        if option.dest == "run_id":  # a run's traces are named after the release unless told
            value = f"{ref} | default .Release.Name | quote"
        elif option.type is int:
            value = f"{ref} | int64 | quote"  # never 1.2345678e+07
        else:
            value = f"{ref} | quote"
        if option.dest == "split":  # ModuleSpec.input_only: those modules offload the input itself
            lines.append(f'  {option.env}: {{{{ if has .Values.workload.module (list {input_only}) }}}}"0"'
                         f"{{{{ else }}}}{{{{ {value} }}}}{{{{ end }}}}")
        else:
            lines.append(f"  {option.env}: {{{{ {value} }}}}")
    return "\n".join(lines) + "\n"


def options_table() -> str:
    rows = ["| option | default | valid | meaning |", "| --- | --- | --- | --- |"]
    for option in run_options():
        default = option.run_default if option.run_default is not None else option.default
        who = f"{', '.join(readers(option))}: " if option.group == "knob" else ""
        rows.append(f"| `{option.flag}` | `{default}` | {option.describe_range()} | {who}{option.help} |".replace(
            "``", "(empty)"))
    return "\n".join(rows) + "\n"


def module_facts() -> list[dict[str, str]]:
    """Each registered module's facts as text: the README table and ``testbed modules``."""
    return [{"module": m.name, "paper": m.paper, "what crosses the cut": m.description,
             "knobs": ", ".join(f"{k.flag} {k.default!r}" for k in m.knobs) or "-",
             "at the source": m.at_source or "-", "at the server": m.at_server or "-",
             "split": "0 (it compresses the input)" if m.input_only else "--split",
             "server lr scale": f"{m.server_lr_scale:g}"} for m in modules()]


def deviations_table() -> str:
    """Every module's declared deviations from its paper (its registry entry's ``deviations``)."""
    rows = ["| module | the paper | here | why |", "| --- | --- | --- | --- |"]
    sharing: dict[object, list] = {}  # modules that share one declaration (the filter family) share a row
    for m in modules():
        for d in m.deviations:
            sharing.setdefault(d, []).append(m)
    for d, names in sharing.items():
        who = ", ".join(f"`{m.name}`" for m in names) + f" ({names[0].paper})"
        rows.append("| " + " | ".join([who, d.paper, d.ours, d.why]).replace("\n", " ") + " |")
    return "\n".join(rows) + "\n"


def modules_table() -> str:
    facts = module_facts()
    columns = list(facts[0])
    rows = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in facts:
        cells = [f"`{row['module']}`"] + [row[c].replace("|", "\\|") for c in columns[1:]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def profiles_table() -> str:
    """The link profiles (``--link``), from their declarations in testbed/links/profiles.py."""
    from .links.profiles import PROFILES

    rows = ["| profile | rate (up/down) | medium | delay, one way | the link | where the numbers come from |",
            "| --- | --- | --- | --- | --- | --- |"]
    for p in PROFILES.values():
        rows.append(f"| `{p.name}` | {p.bandwidth} | {p.medium} | {p.delay} | {p.about} | {p.source} |")
    return "\n".join(rows) + "\n"


def figures_table() -> str:
    """Every figure of a run (``summary.json``'s keys) and every view the tables show, from
    their declarations in analysis/figures.py, a table per family."""
    from analysis.figures import DECLARED, FAMILIES, FIGURES, PLACES, Figure

    def family(d) -> str:
        return d.family if isinstance(d, Figure) else FIGURES[d.of[0]].family

    def scope(d) -> str:
        if not isinstance(d, Figure):
            return "view of " + ", ".join(f"`{name}`" for name in d.of)
        return d.scope + (f" ({d.reduce} in a cell)" if d.reduce and d.scope == "per source" else "")

    blocks = [f"Where: {'; '.join(f'{k}: {v}' for k, v in PLACES.items())}.\n"]
    for key, about in FAMILIES.items():
        rows = [f"**{about}**", "", "| figure | per | unit | decimals | title | where | definition |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for d in (d for d in DECLARED if family(d) == key):
            places = ", ".join(d.shown_in) or "-"
            places += " (when known)" if d.optional else ""
            digits = getattr(d, "decimals", None)
            cells = [f"`{d.name}`", scope(d), d.unit or "-", "-" if digits is None else str(digits), d.title or "-",
                     places, d.definition]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        blocks.append("\n".join(rows) + "\n")
    return "\n".join(blocks)


def exits_table(kind: str) -> str:
    """The exit statuses of ``testbed`` (``kind`` "testbed", testbed/errors.py) or of the
    programs ("programs", workloads/errors.py)."""
    from workloads.errors import Exit as ProgramExit

    from .errors import Exit

    rows = ["| status | meaning |", "| --- | --- |"]
    rows += [f"| {int(e)} | {e.meaning} |" for e in (Exit if kind == "testbed" else ProgramExit)]
    return "\n".join(rows) + "\n"


def events_table() -> str:
    """Every trace event, from its declaration (workloads/events.py)."""
    from workloads.events import markdown_table

    return markdown_table().rstrip("\n") + "\n"


def replace_between(text: str, name: str, body: str, comment: str) -> str:
    """``text`` with what lies between the markers named ``name`` replaced by ``body``."""
    begin, end = comment.format(f"{BEGIN} ({name})"), comment.format(f"{END} ({name})")
    head, found, rest = text.partition(begin + "\n")
    middle, found_end, tail = rest.partition(end)
    if not found or not found_end:
        raise SystemExit(f"generate: markers for {name} are missing")
    return head + begin + "\n" + body + end + tail


def outputs() -> dict[Path, str]:
    """Every generated file's path and its text as the declarations give it."""
    values = (CHART / "values.yaml").read_text()
    readme = (REPO / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = replace_between(readme, "options", options_table(), "<!-- {} -->")
    readme = replace_between(readme, "modules", modules_table(), "<!-- {} -->")
    readme = replace_between(readme, "deviations", deviations_table(), "<!-- {} -->")
    readme = replace_between(readme, "profiles", profiles_table(), "<!-- {} -->")
    readme = replace_between(readme, "figures", figures_table(), "<!-- {} -->")
    readme = replace_between(readme, "exit statuses", exits_table("testbed"), "<!-- {} -->")
    readme = replace_between(readme, "programs' exit statuses", exits_table("programs"), "<!-- {} -->")
    readme = replace_between(readme, "events", events_table(), "<!-- {} -->")
    return {
        CHART / "values.yaml": replace_between(values, "workload", values_block(), "# -- {} --"),
        CHART / "values.schema.json": json.dumps(schema_with_options(schema), indent=2) + "\n",
        CHART / "templates" / "configmap.yaml": configmap(),
        REPO / "README.md": readme,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file differs, write nothing")
    args = parser.parse_args(argv)
    drifted = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else ""
        if current != text:
            drifted.append(path.relative_to(REPO))
            if not args.check:
                path.write_text(text)
    if args.check and drifted:
        print(f"generate: out of date with the declarations: {', '.join(map(str, drifted))} "
              f"(run python -m testbed.generate)", file=sys.stderr)
        return 1
    for path in drifted:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
