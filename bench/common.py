"""What every benchmark prints beside its figures: the machine and the command."""
from __future__ import annotations

import datetime
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def header(title: str, command: str | None = None) -> list[str]:
    cmd = command or " ".join(shlex.quote(a) for a in ["python", "-m", *sys.argv[0:1]])
    return [f"## {title}", "",
            f"- command: `{cmd}`",
            f"- machine: {machine()}",
            f"- date: {datetime.date.today().isoformat()}", ""]


def write(name: str, lines: list[str]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path
