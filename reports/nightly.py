"""The nightly job's renderings: ``nightly.md`` and its ``junit.xml`` (the job itself is
:mod:`stress.nightly`)."""
from __future__ import annotations

from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

from .confidence import confidence_text
from .junit import junit_suite

if TYPE_CHECKING:
    from stress.nightly import Entry


def nightly_markdown(doc: dict, entries: list[Entry]) -> str:
    """``nightly.md``: one table of the campaigns, the findings of an as-designed one, and
    what a clean one means (the PCT bound)."""
    verdict = "PASSED" if doc["passed"] else ("INTERRUPTED" if doc["interrupted"] else "FAILED")
    lines = [f"# tdx-stress nightly: {verdict}", "",
             f"* tool version {doc['tool_version']}, base seed {doc['base_seed']}",
             f"* command: `{' '.join(doc['argv'])}`", "",
             "| campaign | variant | runs | seconds | findings | verdict | report |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        s = e.summary
        lines.append(f"| {e.role} | {e.variant} | {s['runs']} | {s['elapsed_s']:.1f} | "
                     f"{len(s['findings'])} | {'ok' if e.ok else '**FAIL**'}: {e.verdict} | "
                     f"[{e.out.name}/report.md]({e.out.name}/report.md) |")
    for e in entries:
        if e.role == "as-designed" and e.summary["findings"]:
            lines += ["", f"## Findings in {e.variant}", ""]
            for f in e.summary["findings"]:
                lines.append(f"* {f['kind']} `{f['signature']}` in {f['count']} run(s), first "
                             f"seed {f['first_seed']}: `tdx-stress replay "
                             f"{e.out / f['repro']}`")
    for e in entries:
        if e.role == "as-designed" and not e.summary["findings"]:
            lines += ["", f"## What a clean {e.variant} means", ""]
            lines += confidence_text(e.summary)
    return "\n".join(lines) + "\n"


def nightly_junit(entries: list[Entry]) -> str:
    """One suite per as-designed campaign (as ``tdx-stress run`` writes it) and a canary
    suite whose one case passes only if the canary's hunt was caught."""
    root = ET.Element("testsuites", name="tdx-stress nightly")
    for e in entries:
        if e.role == "as-designed":
            suite = junit_suite(e.summary, e.out)
            if not e.ok and not e.summary["findings"]:
                # not clean, and no finding says why (interrupted, internal errors): one
                # failing case that does, so no passing suite stands for work not done
                case = ET.SubElement(suite, "testcase", classname=suite.get("name", ""),
                                     name="campaign not completed", time="0")
                ET.SubElement(case, "failure", message=e.verdict,
                              type="INCOMPLETE").text = e.verdict
                suite.set("tests", str(int(suite.get("tests", "0")) + 1))
                suite.set("failures", str(int(suite.get("failures", "0")) + 1))
            root.append(suite)
            continue
        suite = ET.SubElement(root, "testsuite", name=f"tdx-stress.canary.{e.variant}",
                              tests="1", failures="0" if e.ok else "1", errors="0",
                              skipped="0", time=f"{e.summary['elapsed_s']:.3f}")
        case = ET.SubElement(suite, "testcase", classname="tdx-stress.canary",
                             name=f"{e.variant} is caught", time=f"{e.summary['elapsed_s']:.3f}")
        if not e.ok:
            ET.SubElement(case, "failure", message=e.verdict, type="CANARY").text = e.verdict
        else:
            first = e.summary["findings"][0] if e.summary["findings"] else None
            ET.SubElement(case, "system-out").text = (
                e.verdict + (f"; first: {first['signature']}" if first else "") + "\n")
    tests = sum(int(s.get("tests", 0)) for s in root)
    failures = sum(int(s.get("failures", 0)) for s in root)
    root.set("tests", str(tests))
    root.set("failures", str(failures))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
