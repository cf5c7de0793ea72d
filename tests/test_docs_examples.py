"""Every `interaction-jax sweep … --dry-run` example in README.md and experiments/README.md runs as written.

The commands are parsed out of the markdown's code blocks (continuation lines joined, comments dropped),
so a changed example is tested as it now reads; a dry run trains nothing, so each takes seconds.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "experiments/README.md")


def shell_commands(markdown: str) -> list[list[str]]:
    """The commands of a markdown file's fenced code blocks as argv lists: a line ending in a backslash
    continues on the next, and `#` starts a comment."""
    commands, in_block, pending = [], False, ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        argv = shlex.split(pending, comments=True)
        pending = ""
        if argv:
            commands.append(argv)
    return commands


def sweep_dry_runs(doc: str) -> list[list[str]]:
    return [
        argv
        for argv in shell_commands((ROOT / doc).read_text())
        if argv[:2] == ["interaction-jax", "sweep"] and "--dry-run" in argv
    ]


EXAMPLES = [(doc, argv) for doc in DOCS for argv in sweep_dry_runs(doc)]


def test_the_parser_joins_continuations_and_drops_comments():
    text = "prose `interaction-jax sweep x.py --dry-run`\n```bash\na --b 'c d' \\\n    --e f   # note\n# only\n```\n"
    assert shell_commands(text) == [["a", "--b", "c d", "--e", "f"]]


def test_every_doc_has_sweep_dry_run_examples():
    # a control for the parametrized test below: it would pass vacuously if the parser found nothing
    assert {doc for doc, _ in EXAMPLES} == set(DOCS)
    assert any("--pod" in argv for _, argv in EXAMPLES)


@pytest.mark.parametrize(("doc", "argv"), EXAMPLES, ids=[f"{d}:{' '.join(a[2:4])}" for d, a in EXAMPLES])
def test_sweep_dry_run_example_runs_as_written(doc, argv):
    command = [sys.executable, "-m", "interaction_jax.cli", *argv[1:]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{doc}: {shlex.join(argv)}\n{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    launched = [line for line in lines if line.startswith(("gcloud ", "interaction-jax train "))]
    runs = sum(line.startswith("# run ") for line in lines)
    assert runs >= 1 and launched, result.stdout
    if "--pod" in argv:
        assert all(line.startswith("gcloud compute tpus tpu-vm ssh ") for line in launched), result.stdout
        assert lines.count("wait") == runs  # a run's hosts finish before the next run starts
