"""The benchmark results the docs quote are in the repository.

Figures in README.md and benchmarks/*.md come with the results file they were read from, and
``benchmarks/search.py --reanalyze`` re-reads those files. A file left out of a commit (the
results folder was once ignored by git) leaves a table nobody can check or re-read."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "benchmarks/RESULTS.md", "benchmarks/README.md", "benchmarks/README-search.md"]
# The defaults that benchmarks/README-search.md describes, not results it quotes.
DEFAULT_OUTPUTS = {"benchmarks/results/search.json", "benchmarks/results/search-logs/"}
# A path written right after --output or a shell redirect is where a command would write, not
# a file the text reads from (the same path cited elsewhere is checked there).
_CITED = re.compile(r"(--output\s+|>\s*)?(benchmarks/results/[\w./{},-]+)")


def expand_braces(path: str) -> list[str]:
    """``a_{x,y}.json`` -> ``a_x.json``, ``a_y.json`` (as the shell reads the commands)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def cited_results(text: str) -> list[str]:
    cited = []
    for m in _CITED.finditer(text):
        if m.group(1):
            continue
        cited += expand_braces(m.group(2).rstrip(".,;:)`'\""))
    return cited


def test_expand_braces_and_outputs_are_not_citations():
    assert expand_braces("benchmarks/results/s_{a,b}.json") == ["benchmarks/results/s_a.json",
                                                               "benchmarks/results/s_b.json"]
    text = ("run `x --output benchmarks/results/new.json` then read benchmarks/results/old.json, "
            "and `y > benchmarks/results/log.txt`")
    assert cited_results(text) == ["benchmarks/results/old.json"]


def test_every_results_file_the_docs_cite_is_in_the_repository():
    missing = sorted({f"{doc}: {path}" for doc in DOCS
                      for path in cited_results((ROOT / doc).read_text(encoding="utf-8"))
                      if path not in DEFAULT_OUTPUTS and not (ROOT / path).exists()})
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_git_does_not_ignore_the_results_folder():
    # Ignored files stay on the machine that made them; the claims built on them do not.
    # Git itself decides (any .gitignore, any pattern), not a reading of one file.
    probe = "benchmarks/results/a_new_run.json"
    check = subprocess.run(["git", "check-ignore", "--no-index", "-q", probe], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode in (0, 1), f"git check-ignore failed: {check.stderr.strip()}"
    assert check.returncode == 1, f"git ignores {probe}"
