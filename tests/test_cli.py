"""The command line: each command takes only the flags it reads, all in kebab-case, and the documented
commands parse as written."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

from interaction_jax import cli
from tests.test_docs_examples import shell_commands

ROOT = Path(__file__).resolve().parents[1]
# every doc that shows commands, except docs/results.md: a log of what was run then, in the spelling of then
DOCS = ["README.md", "experiments/README.md", *(str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("docs/*.md")))]
DOCS.remove("docs/results.md")
# read by main (the log level) or set by the parser itself, not by a command
NOT_COMMAND_FLAGS = {"help", "log_level", "run", "parser", "command", "action"}
# the helpers a command may read its flags through
HELPERS = (cli.resolve_config, cli._load_checkpoint, cli._auth_token)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """{"train": its parser, …, "data preview": …, "data bank": …}."""
    parser, _ = cli._parser()

    def children(p: argparse.ArgumentParser, prefix: str) -> dict[str, argparse.ArgumentParser]:
        found = {}
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.update(children(sub, f"{prefix}{name} ") or {f"{prefix}{name}": sub})
        return found

    return children(parser, "")


def parse(*argv: str) -> argparse.Namespace:
    parser, _ = cli._parser()
    return parser.parse_args(argv)


def test_every_command_is_listed():
    assert list(subcommands()) == [
        *("demo", "train", "eval", "sweep", "serve", "talk", "config", "plan", "data preview", "data bank")
    ]


def test_every_flag_is_kebab_case():
    for name, sub in subcommands().items():
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag == "-h" or re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", flag), (name, flag)


def _reads(source: str) -> set[str]:
    return set(re.findall(r"\bargs\.(\w+)", source))


def test_every_flag_a_command_takes_is_read_by_it():
    """A flag that is accepted takes effect: the command (or a helper it calls) reads its value."""
    helpers = {fn.__name__: _reads(inspect.getsource(fn)) for fn in HELPERS}
    for name, sub in subcommands().items():
        run = sub.get_default("run")
        source = inspect.getsource(run)
        read = _reads(source).union(*(r for h, r in helpers.items() if f"{h}(" in source))
        dests = {a.dest for a in sub._actions} - NOT_COMMAND_FLAGS
        assert dests <= read, (name, dests - read)


def test_the_checker_above_sees_an_unread_flag():
    # a control: a flag added to a command that does not read it is caught by the same arithmetic
    sub = subcommands()["config"]
    sub.add_argument("--unread")
    dests = {a.dest for a in sub._actions} - NOT_COMMAND_FLAGS
    assert dests - _reads(inspect.getsource(cli.cmd_config) + inspect.getsource(cli.resolve_config)) == {"unread"}


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--workdir", "w", "--preset", "tiny"],  # the checkpoint fixes the preset
        ["serve", "--workdir", "w", "--no-progress"],  # serving shows no progress bars
        ["sweep", "x.py", "--config", "c.yaml"],  # shared overrides go in the sweep's BASE
        ["config", "--workdir", "w"],
        ["talk", "--wav", "in.wav", "--set", "serve.temperature=1"],  # the server's config, not talk's
        ["train", "--workdir", "w", "--num_processes", "2"],  # one spelling: --num-processes
    ],
)
def test_a_flag_the_command_does_not_read_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: interaction-jax {argv[0]}" in err and "unrecognized arguments" in err, err


def test_shared_flags_read_the_same_in_every_command():
    train = parse("train", "--workdir", "w", "--set", "a.b=1", "--set", "c.d=2", "--no-progress", "--preset", "small")
    assert (train.sets, train.progress, train.preset, train.workdir) == (["a.b=1", "c.d=2"], False, "small", "w")
    demo = parse("demo")
    assert (demo.sets, demo.progress, demo.preset, demo.out, demo.max_minutes) == ([], True, "tiny", "demo", None)
    sweep = parse("sweep", "experiments/top_k.py", "--dry-run", "--num-devices", "8")
    assert (sweep.preset, sweep.mesh, sweep.workdir, sweep.dry_run, sweep.num_devices) == (
        None,  # the sweep file's PRESET
        None,
        "runs/sweeps",
        True,
        8,
    )
    distributed = parse(
        "train", "--workdir", "w", "--coordinator-address", "h:1", "--num-processes=2", "--process-id=1"
    )
    assert (distributed.coordinator_address, distributed.num_processes, distributed.process_id) == ("h:1", 2, 1)


def test_without_a_command_the_usage_names_them(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    assert "commands: demo, train, eval, sweep, serve, talk, config, plan, data" in capsys.readouterr().err


def test_a_usage_error_exits_1_with_the_message_last(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["plan", "--compare", "model.remat=none,block"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "--compare only applies with --compile"


DOCUMENTED = [
    (doc, argv)
    for doc in DOCS
    for argv in shell_commands((ROOT / doc).read_text())
    if argv[0] == "interaction-jax" and argv[1] in cli._parser()[1]
]


def test_the_docs_show_commands():
    # a control for the test below: it would pass vacuously if the docs' commands were not found
    assert {argv[1] for _, argv in DOCUMENTED} >= {"demo", "train", "eval", "sweep", "serve", "talk", "plan", "data"}


@pytest.mark.parametrize(("doc", "argv"), DOCUMENTED, ids=[f"{d}:{' '.join(a[1:3])}" for d, a in DOCUMENTED])
def test_documented_commands_parse_as_written(doc, argv):
    parser, _ = cli._parser()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{doc}: `{' '.join(argv)}` does not parse")
    assert args.command == argv[1]
