"""`python -m bench`: the `coinfer-bench` command (bench.linkbench.cli)."""
import sys

from bench.linkbench.cli import main

sys.exit(main())
