"""JUnit XML of a campaign, for CI (GitLab, Jenkins)."""
from __future__ import annotations

from xml.etree import ElementTree as ET


def junit_xml(s: dict) -> str:
    """One test case per distinct finding (a failure) and one for the clean remainder;
    names are the signatures, so they are unique and stable across runs."""
    suite = ET.Element("testsuite", name=f"tdx-stress.{s['variant']}",
                       tests=str(len(s["findings"]) + 1), failures=str(len(s["findings"])),
                       errors="0", skipped="0", time=f"{s['elapsed_s']:.3f}")
    for f in s["findings"]:
        case = ET.SubElement(suite, "testcase", classname=f"tdx-stress.{s['variant']}",
                             name=f["signature"], time="0")
        fail = ET.SubElement(case, "failure", message=f["message"][:500], type=f["kind"])
        fail.text = (f"{f['kind']} path={f['path']} row={f['row']} in {f['count']} run(s), "
                     f"first seed {f['first_seed']}\nreplay: tdx-stress replay "
                     f"{f['repro']}\n")
    ET.SubElement(suite, "testcase", classname=f"tdx-stress.{s['variant']}",
                  name=f"clean remainder ({s['runs']} runs)", time=f"{s['elapsed_s']:.3f}")
    suites = ET.Element("testsuites")
    suites.append(suite)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
