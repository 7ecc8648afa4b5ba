"""What every benchmark prints beside its figures: the command, the machine and its load.

A result file holds only what its run measured; the machine's load is measured too (the
1-minute load average when the run started and when it ended), never assumed.  Notes on how
to read the figures live in docs/benchmarks-notes.md.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NOTES_DOC = "docs/benchmarks-notes.md"


def machine() -> str:
    model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load_average() -> float:
    """1-minute load average (runnable + uninterruptible tasks), as the kernel reports it."""
    return os.getloadavg()[0]


@dataclass
class RunLoad:
    """The machine's load at the start of a run (taken when made) and, on `line()`, now."""
    start: float = field(default_factory=load_average)

    def line(self) -> str:
        return (f"- load average (1 min): {self.start:.2f} at start, {load_average():.2f} at end "
                f"({os.cpu_count()} cores)")


def header(title: str, command: str | None = None, load: RunLoad | None = None) -> list[str]:
    cmd = command or " ".join(shlex.quote(a) for a in ["python", "-m", *sys.argv[0:1]])
    lines = [f"## {title}", "",
             f"- command: `{cmd}`",
             f"- machine: {machine()}",
             f"- date: {datetime.date.today().isoformat()}"]
    if load is not None:
        lines.append(load.line())
    return lines + [""]


def command_line(module: str, argv: list[str] | None) -> str:
    """The command a run was started with, as its result file names it."""
    return " ".join([f"python -m {module}", *(sys.argv[1:] if argv is None else argv)])


def net_admin_problem() -> str | None:
    """Why the shaped-link benches cannot run here (namespaces, tc need root), or None."""
    from testbed import LinkUnavailable, require_net_admin
    try:
        require_net_admin()
    except LinkUnavailable as e:
        return str(e)
    return None


def notes_line(section: str) -> str:
    """One line pointing at the hand-written notes for this result (not part of the run)."""
    return f"How to read this: [{NOTES_DOC}](../../{NOTES_DOC}#{section})."


def write(name: str, lines: list[str]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path
