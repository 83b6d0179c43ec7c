#!/usr/bin/env python3
"""Render a run directory's report and capture ``report.html`` in headless Chromium.

    python scripts/screenshot_report.py RUN_DIR OUT.png [--width 1400] [--height 3000]
                                        [--no-render] [--dump-dom DOM.html]

Re-renders the reports of RUN_DIR first (``reports.render.write_reports``; lane files
beside the repros are picked up) unless ``--no-render``, then runs Chromium from the
distribution (``chromium``, ``chromium-browser`` or ``$CHROMIUM``) headless on the
``file://`` URL.  Exit 0 with the PNG written; 2 when no Chromium is installed or the
run directory is unusable; 3 when Chromium fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium binary to use: ``$CHROMIUM`` if set, else the first on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_args(chromium: str, profile: str, *extra: str) -> list[str]:
    # --headless is the new headless mode in Chromium >= 132 (the old one is gone);
    # --no-sandbox because CI and containers run as root; a profile of its own so two
    # runs at once do not fight over one profile's lock
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-extensions",
            "--disable-component-update", "--no-first-run", "--no-default-browser-check",
            "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}", *extra]


def screenshot(html: Path, png: Path, *, width: int = 1400, height: int = 3000,
               chromium: str | None = None, timeout: float = 90.0) -> None:
    """Capture the top ``width`` x ``height`` pixels of ``html`` into ``png``."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary found (apt-get install chromium)")
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="tdx-stress-chromium-") as profile:
        r = subprocess.run(chromium_args(chromium, profile, f"--window-size={width},{height}",
                                         "--run-all-compositor-stages-before-draw",
                                         f"--screenshot={png}", html.resolve().as_uri()),
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {r.returncode}): "
                           f"{r.stderr.strip().splitlines()[-1:] or ''}")


def dump_dom(html: Path, *, chromium: str | None = None, timeout: float = 90.0) -> str:
    """The DOM of ``html`` as Chromium parsed it."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="tdx-stress-chromium-") as profile:
        r = subprocess.run(chromium_args(chromium, profile, "--dump-dom",
                                         html.resolve().as_uri()),
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    if r.returncode != 0 or "<html" not in r.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {r.returncode})")
    return r.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path, help="the PNG to write")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--no-render", action="store_true",
                   help="capture the report.html that is there; do not render it again")
    p.add_argument("--dump-dom", type=Path, default=None, metavar="FILE",
                   help="also write the DOM as Chromium parsed it")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from reports.render import write_reports
    from reports.rundir import ReportError, load_summary
    html = args.run_dir / "report.html"
    if not args.no_render:
        try:
            s = load_summary(args.run_dir)
        except ReportError as e:
            print(f"screenshot_report: {e}", file=sys.stderr)
            return 2
        write_reports(s, args.run_dir)
    if not html.exists():
        print(f"screenshot_report: {html} does not exist", file=sys.stderr)
        return 2
    if find_chromium() is None:
        print("screenshot_report: no chromium binary found (apt-get install chromium)",
              file=sys.stderr)
        return 2
    try:
        screenshot(html, args.out, width=args.width, height=args.height)
        if args.dump_dom:
            args.dump_dom.write_text(dump_dom(html))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"screenshot_report: {e}", file=sys.stderr)
        return 3
    print(f"wrote {args.out} ({args.width}x{args.height}) of {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
