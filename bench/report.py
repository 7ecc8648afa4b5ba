"""Gather bench/results/*.md into BENCHMARKS.md (`python -m bench.report`)."""
from __future__ import annotations

from bench.common import RESULTS

ROOT = RESULTS.parent.parent
ORDER = ["codec", "runtime", "load", "evaluate", "search", "search_full", "netns", "link"]
INTRO = """# Benchmarks

Every figure below was produced by the command named in its section, on the machine named
there, and compares against a baseline measured in the same run (the machines are shared
and noisy; absolute times drift). Regenerate a section with its command, then
`python -m bench.report` to gather them here.

| make target | sections |
|---|---|
| `make bench` | codec, runtime |
| `make bench-load` | load |
| `make bench-link` (root) | netns, link |
| `python -m bench.evaluate`, `python -m bench.search` | evaluate, search, search_full |
"""


def main() -> int:
    files = {p.stem: p for p in RESULTS.glob("*.md")}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    parts = [INTRO] + [files[n].read_text().strip() + "\n" for n in names]
    (ROOT / "BENCHMARKS.md").write_text("\n\n".join(parts))
    print(f"BENCHMARKS.md: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
