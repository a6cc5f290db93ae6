"""docs/test-results.md from pytest's JUnit XML: the platform's test plan, case by case.

    python3 -m tests.plan_report JUNIT_XML [--output docs/test-results.md]

The cases (the plan's words, how each is shown, the plan's headings) come from
tests/test_platform_plan.py, read with `ast` (nothing is imported or run): each
``test_case_NN_*`` function's docstring holds the plan's words in its first paragraph and how the
case is shown in the rest. The results come from the XML: outcome, time (`.ci/run` passes
``-o junit_duration_report=call``: the test's own run, the shared mesh set up apart), the figures
each test recorded (JUnit properties, the ``figures`` fixture) and the shared mesh's set-up
figures (test-suite properties). A case missing from the XML shows as "not run".
Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

MODULE = Path(__file__).with_name("test_platform_plan.py")
MODULE_NAME = "tests.test_platform_plan"
CASE = re.compile(r"^test_case_(\d+)_")
SETUP_PREFIX = "plan mesh: "


@dataclass
class Case:
    number: int
    test: str
    plan: str
    how: str
    outcome: str = "not run"
    seconds: float | None = None
    message: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)


def _paragraphs(doc: str) -> list[str]:
    """The docstring's paragraphs, each on one line, RST literals as Markdown code."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    return [p.replace("``", "`") for p in paras]


def read_cases(module: Path = MODULE) -> tuple[list[Case], dict[int, str], str]:
    """The plan's cases in order, its headings (by the first case under each) and the
    module's description of the shared mesh."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    cases, sections = [], {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (m := CASE.match(node.name)):
            paras = _paragraphs(ast.get_docstring(node) or "")
            cases.append(Case(int(m.group(1)), node.name, paras[0] if paras else "",
                              " ".join(paras[1:])))
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "SECTIONS"):
            sections = ast.literal_eval(node.value)
    module_doc = ast.get_docstring(tree) or ""
    start = module_doc.find("One mesh")
    mesh = module_doc[start:].strip() if start >= 0 else ""
    return sorted(cases, key=lambda c: c.number), sections, mesh


def read_results(xml_path: Path, cases: list[Case]) -> dict[str, str]:
    """Fill `cases` from the JUnit XML; return the run's facts (time stamp, host, set-up
    figures)."""
    root = ET.parse(xml_path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    by_name = {c.test: c for c in cases}
    facts: dict[str, str] = {}
    for suite in suites:
        facts.setdefault("timestamp", suite.get("timestamp", ""))
        facts.setdefault("hostname", suite.get("hostname", ""))
        for prop in suite.findall("properties/property"):
            name = prop.get("name", "")
            if name.startswith(SETUP_PREFIX):
                facts["setup: " + name.removeprefix(SETUP_PREFIX)] = prop.get("value", "")
        for tc in suite.iter("testcase"):
            case = by_name.get(tc.get("name", ""))
            if case is None or not tc.get("classname", "").endswith(MODULE_NAME):
                continue
            case.seconds = float(tc.get("time") or 0.0)
            case.outcome = "passed"
            for tag, outcome in (("failure", "failed"), ("error", "error"),
                                 ("skipped", "skipped")):
                found = tc.find(tag)
                if found is not None:
                    case.outcome = outcome
                    text = found.get("message") or found.text or ""
                    case.message = " ".join(text.split())[:300]
                    break
            case.figures = [(p.get("name", ""), p.get("value", ""))
                            for p in tc.findall("properties/property")]
    return facts


def _anchor(case: Case) -> str:
    return f"case-{case.number}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(cases: list[Case], sections: dict[int, str], mesh: str, facts: dict[str, str],
           source: str) -> str:
    """The Markdown page."""
    passed = sum(c.outcome == "passed" for c in cases)
    ran = [c for c in cases if c.seconds is not None]
    when = facts.get("timestamp", "")
    with contextlib.suppress(ValueError):
        when = datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M %Z").strip()
    out = [
        "# Test results: the platform's test plan",
        "",
        "<!-- Written by `python3 -m tests.plan_report JUNIT_XML --output docs/test-results.md`"
        " from pytest's JUnit XML; change tests/test_platform_plan.py or tests/plan_report.py,"
        " not this file. -->",
        "",
        "The acceptance cases of the platform's original plan, each one automated test in",
        "[`tests/test_platform_plan.py`](../tests/test_platform_plan.py) on real parts: real",
        "Syncthing, the real papad servers (upstream papad and papadam, from the papad test kit),",
        "real yggdrasil nodes, chrony and Syncthing in network namespaces the test makes, nginx",
        "with the appliance's document-root config, and the appliance's own `recorder run` and",
        "`recorder` commands. `.ci/run` regenerates this page after every CI run; the copy in the",
        "repository is the last full run of the module on the build machine (2 cores, Debian 12).",
        "",
        f"**Last run:** {when or 'unknown time'} on `{facts.get('hostname') or '?'}` "
        f"(`{source}`): **{passed} of {len(cases)} cases passed**; the cases took "
        f"{sum(c.seconds or 0.0 for c in ran):.0f} s, the shared mesh's set-up apart. A time is "
        "the test's own run (`-o junit_duration_report=call`).",
        "",
        "| # | the plan's words | test | result | time |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        secs = f"{c.seconds:.1f} s" if c.seconds is not None else "-"
        out.append(f"| [{c.number}](#{_anchor(c)}) | {_cell(c.plan)} | `{c.test}` | "
                   f"{c.outcome} | {secs} |")
    setup = [(k, v) for k, v in facts.items() if k.startswith("setup: ")]
    if mesh or setup:
        out += ["", "## The shared mesh", ""]
        if mesh:
            out += [mesh.replace("``", "`"), ""]
        if setup:
            out += ["| set-up figure | value |", "|---|---|"]
            out += [f"| {_cell(k.removeprefix('setup: '))} | {_cell(v)} |" for k, v in setup]
    for c in cases:
        if c.number in sections:
            out += ["", f"## {sections[c.number]}"]
        out += ["", f'<a id="{_anchor(c)}"></a>', "", f"### {c.number}. {c.plan}", ""]
        result = c.outcome if c.seconds is None else f"{c.outcome} in {c.seconds:.1f} s"
        out += [f"- **Test:** `tests/test_platform_plan.py::{c.test}`",
                f"- **Result:** {result}"]
        if c.message:
            out.append(f"- **Why:** {c.message}")
        if c.how:
            out.append(f"- **How:** {c.how}")
        if c.figures:
            out += ["", "| figure | value |", "|---|---|"]
            out += [f"| {_cell(name)} | {_cell(value)} |" for name, value in c.figures]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit_xml", type=Path, help="pytest's --junitxml output")
    parser.add_argument("--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    cases, sections, mesh = read_cases()
    try:
        facts = read_results(args.junit_xml, cases)
    except (OSError, ET.ParseError) as exc:
        print(f"plan_report: error: cannot read {args.junit_xml}: {exc}", file=sys.stderr)
        return 5
    text = render(cases, sections, mesh, facts, args.junit_xml.name)
    if args.output:
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.output)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
