"""JUnit XML of a campaign, for CI (GitLab, Jenkins).

One ``<testcase>`` per distinct finding, failed, with the finding's first line as the
message and the replay command in its text; one passing ``<testcase>`` for the clean
remainder of the campaign.  Names are the finding signatures and the fixed name
``clean remainder``, so a CI server tracks the same case across nights (a count in a
name would make every night a new test).  ``reports/schema/junit.xsd`` states the
format; :func:`validate` checks a file against it.

Example::

    >>> s = {"variant": "hunt-d", "elapsed_s": 1.5, "runs": 3, "base_seed": 0,
    ...      "argv": ["tdx-stress", "run"], "findings": [{"signature": "KVM_BUG_ON:f:row=13:path=d",
    ...      "kind": "KVM_BUG_ON", "path": "d", "row": 13, "count": 1, "first_seed": 2,
    ...      "message": "boom", "repro": "findings/a.json"}]}
    >>> text = junit_xml(s)
    >>> validate(text)
    >>> 'name="KVM_BUG_ON:f:row=13:path=d"' in text and 'name="clean remainder"' in text
    True
"""
from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

SCHEMA = Path(__file__).with_name("schema") / "junit.xsd"


def junit_xml(s: dict, out: Path | None = None) -> str:
    """The JUnit document of summary ``s``; repro paths are shown under ``out`` (the run
    directory) when given, else relative to it."""
    suite = junit_suite(s, out)
    n = int(suite.get("failures", "0"))
    suites = ET.Element("testsuites", name="tdx-stress", tests=str(n + 1), failures=str(n),
                        errors="0", time=f"{s['elapsed_s']:.3f}")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def junit_suite(s: dict, out: Path | None = None) -> ET.Element:
    """The ``<testsuite>`` of one campaign (see :func:`junit_xml`)."""
    variant = s["variant"]
    cls = f"tdx-stress.{variant}"
    n = len(s["findings"])
    suite = ET.Element("testsuite", name=cls, tests=str(n + 1), failures=str(n),
                       errors="0", skipped="0", time=f"{s['elapsed_s']:.3f}")
    props = ET.SubElement(suite, "properties")
    for k in ("variant", "mode", "strategy", "depth", "base_seed", "shard", "runs",
              "tool_version"):
        if s.get(k) is not None:
            ET.SubElement(props, "property", name=k, value=str(s[k]))
    ET.SubElement(props, "property", name="command", value=" ".join(s.get("argv", [])))
    for f in s["findings"]:
        case = ET.SubElement(suite, "testcase", classname=cls, name=f["signature"],
                             time="0")
        repro = Path(out) / f["repro"] if out is not None else Path(f["repro"])
        replay = f"tdx-stress replay {repro}"
        fail = ET.SubElement(case, "failure", message=_clean(f["message"])[:500],
                             type=f["kind"])
        fail.text = _clean(f"{f['kind']} path={f['path'] or '-'} row={f['row'] or '-'} in "
                           f"{f['count']} run(s), first seed {f['first_seed']}\n"
                           f"{f['message']}\nreplay: {replay}\n")
        ET.SubElement(case, "system-out").text = replay + "\n"
    ok = ET.SubElement(suite, "testcase", classname=cls, name="clean remainder",
                       time=f"{s['elapsed_s']:.3f}")
    ET.SubElement(ok, "system-out").text = (
        f"{s['runs']} runs of {variant}, base seed {s.get('base_seed')}; "
        f"{n} distinct finding(s)\n")
    return suite


def _clean(text: str) -> str:
    """XML 1.0 cannot carry most control characters, even escaped: drop them."""
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)


def validate(xml_text: str) -> None:
    """Raise ``ValueError`` (one sentence) if ``xml_text`` breaks the JUnit schema.
    Needs the ``xmlschema`` package (in the ``test`` extra)."""
    import xmlschema
    schema = xmlschema.XMLSchema(str(SCHEMA))
    errors = list(schema.iter_errors(xml_text))
    if errors:
        raise ValueError(f"junit.xml breaks {SCHEMA.name}: {errors[0].reason} "
                         f"at {errors[0].path}")


__all__ = ["junit_xml", "junit_suite", "validate", "SCHEMA"]
