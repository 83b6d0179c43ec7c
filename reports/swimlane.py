"""Swim lanes: a plain-text diagram of the steps leading to a finding.

One column per thread, one row per step, the operation and its result in the column of
the thread that took it, the failing step marked (drawn from a replay's step log: the
replay itself is :func:`stress.replay.lane_for_repro`'s).  Plain ASCII so it survives a mailing
list.  Example (abridged)::

    step   | vcpu0                      | zapper0
    -------+----------------------------+-----------------------------
      1203 | TDH.VP.ENTER:lock  -> ok   |
      1204 |                            | TDH.MEM.PAGE.AUG:lock -> BUSY
    > 1204 |                            | KVM_BUG_ON handle_changed_spte (a1)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from core.findings import Finding
from core.spte import describe
from core.store import KvmMmuPage
from core.tdx_errno import name as err_name

if TYPE_CHECKING:        # reports/ never runs the machine: a step is only read here
    from stress.controlled import Step

_SEAM = ("TDH.", "TDG.")


def _fmt_arg(label: str, arg: object) -> str:
    if isinstance(arg, tuple) and arg and isinstance(arg[0], KvmMmuPage):
        sp = arg[0]
        i = arg[1] if len(arg) > 1 else 0
        gfn = sp.gfn + i * (1 << (9 * (sp.level - 1)))
        extra = ""
        if label == "spte.cmpxchg" and len(arg) == 4:
            extra = f" {describe(arg[2], sp.level)}->{describe(arg[3], sp.level)}"
        elif label in ("spte.write", "spte.xchg") and len(arg) == 3:
            extra = f" :={describe(arg[2], sp.level)}"
        kind = "M" if sp.is_mirror else "D"
        return f"{kind}L{sp.level} gfn={gfn:#x}{extra}"
    if isinstance(arg, tuple):
        return ",".join(f"{a:#x}" if isinstance(a, int) and a > 9 else str(a) for a in arg)
    if arg is None:
        return ""
    return f"{arg:#x}" if isinstance(arg, int) and arg > 9 else str(arg)


def _fmt_result(label: str, result: object) -> str:
    if label.startswith(_SEAM) and isinstance(result, int):
        return "ok" if result == 0 else err_name(result)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        return "ok" if result[0] else "failed"
    if isinstance(result, bool):
        return str(result).lower()
    return ""


def render(steps: list[Step], threads: list[str], finding: Finding | None = None, *,
           last: int = 40, width: int = 34, consequences: list[dict] | None = None) -> str:
    """The ``last`` steps up to (and including) the finding's step."""
    end = finding.step if finding is not None and finding.step else (steps[-1].step if steps else 0)
    before = [s for s in steps if s.step <= end]
    upto = before[-last:]
    # Threads idle in the window still matter (one may hold the lock the failing step
    # met): show where each of them stopped, above the window.
    shown = {s.thread for s in upto}
    start = upto[0].step if upto else 0
    context: dict[int, Step] = {}
    for b in before:
        if b.step >= start:
            break
        if b.thread not in shown:
            context[b.thread] = b
    head = "step   | " + " | ".join(f"{t:<{width}}" for t in threads)
    rule = "-------+" + "+".join("-" * (width + 2) for _ in threads)
    lines = [head, rule]
    ctx_rows = sorted(context.values(), key=lambda s: s.step)
    rows: list[Step | None] = [*ctx_rows, *([None] if ctx_rows else []), *upto]
    for row in rows:
        if row is None:
            lines.append("   ... | " + " | ".join(f"{'':<{width}}" for _ in threads))
            continue
        s = row
        arg = _fmt_arg(s.label, s.arg)
        res = _fmt_result(s.label, s.result)
        cell = s.label + (f"({arg})" if arg else "") + (f" -> {res}" if res else "")
        cells = [cell[:width] if i == s.thread else "" for i in range(len(threads))]
        mark = ">" if finding is not None and s.step == end else " "
        lines.append(f"{mark}{s.step:>5} | " + " | ".join(f"{c:<{width}}" for c in cells))
    if finding is not None:
        col = threads.index(finding.thread) if finding.thread in threads else 0
        text = f"{finding.kind} {finding.where}" + (f" ({finding.path})" if finding.path else "")
        cells = [text[:width] if i == col else "" for i in range(len(threads))]
        lines.append(f">{end:>5} | " + " | ".join(f"{c:<{width}}" for c in cells))
        lines.append(f"        {finding.kind}: {finding.message.splitlines()[0]}")
        cons = consequences if consequences is not None else finding.consequences
        if cons:
            # the first bug is the finding; what the bugged VM did next is listed here
            lines.append(f"        then, as its consequences ({len(cons)}):")
            for c in cons:
                lines.append(f"          step {c['step']:>5} {c['thread']}: {c['kind']} "
                             f"{c['where']}: {c['message'].splitlines()[0]}")
    return "\n".join(lines)
