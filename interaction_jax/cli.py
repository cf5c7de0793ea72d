"""The `interaction-jax` command: `interaction-jax <command> [flags]`.

Commands: `demo` (the main job: train tiny, then stream held-out episodes through it), `train`,
`eval` (stream held-out episodes through a workdir's checkpoint), `sweep` (run or print a sweep of
experiments/*.py), `serve` (a WebSocket server over a workdir's checkpoint), `talk` (stream a
wav through a server and write the model's side), `config` (print the resolved config), `plan`
(parameter and memory plan from shapes; with `--compile`, the deviceless TPU compile of the train step
and serving tick) and `data preview|bank` (look at a synthetic episode; build the clip bank).

Each command takes only the flags it reads (`interaction-jax <command> --help`), all spelled in
kebab-case; the common ones (`--preset`, `--config`, `--mesh`, `--set`, `--workdir`, `--progress`) come
from shared parent parsers, so they read the same everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Literal

from interaction_jax import config as config_lib

PROG = "interaction-jax"
LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """The command line asks for something the command cannot do; the message says what to pass instead."""


# ----------------------------------------------------------------------------------------------
# Flags shared by several commands (parent parsers)


def _parent(*add: Callable[[argparse.ArgumentParser], object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    for fn in add:
        fn(parser)
    return parser


LOGGING = _parent(
    lambda p: p.add_argument(
        "--log-level", choices=LOG_LEVELS, default="warning", help="absl/JAX log level (default: warning)"
    )
)
PRESET = _parent(
    lambda p: p.add_argument("--preset", default="tiny", help=f"config preset: {', '.join(config_lib.PRESETS)}")
)
CONFIG_FILE = _parent(
    lambda p: p.add_argument("--config", help="YAML file of config keys applied on top of the preset")
)
MESH = _parent(lambda p: p.add_argument("--mesh", help="mesh config YAML (mesh_configs/*.yaml); default: the preset's"))
SETS = _parent(
    lambda p: p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.d_model=256 (repeatable)",
    )
)
# preset → --config YAML → --mesh → --set: the config of train, config, plan and data
CONFIG = argparse.ArgumentParser(add_help=False, parents=[PRESET, CONFIG_FILE, MESH, SETS])
WORKDIR = _parent(
    lambda p: p.add_argument(
        "--workdir", required=True, help="the run's folder (checkpoints, metrics.jsonl, the config)"
    )
)
PROGRESS = _parent(
    lambda p: p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars"
    )
)
ROLLOUTS = _parent(
    lambda p: p.add_argument("--episodes", type=int, default=4, help="held-out episodes per scenario (default 4)"),
    lambda p: p.add_argument("--seeds", type=int, default=2, help="rollout (sampling) seeds per episode (default 2)"),
)
AUTH_TOKEN = _parent(
    lambda p: p.add_argument(
        "--auth-token",
        help="the token clients must send (serve) or send (talk); default: $INTERACTION_JAX_AUTH_TOKEN",
    )
)


def _parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """The command line's parser and its command names."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", metavar="<command>")

    def command(name: str, run: Callable, help: str, parents: Sequence[argparse.ArgumentParser]):
        sub = commands.add_parser(name, help=help, description=help, parents=[*parents, LOGGING])
        sub.set_defaults(run=run, parser=sub)
        return sub

    demo = command(
        "demo", cmd_demo, "train tiny, then stream held-out episodes through it", [PRESET, SETS, ROLLOUTS, PROGRESS]
    )
    demo.add_argument("--out", default="demo", help="output folder (default demo/)")
    demo.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="safety cap on the demo's wall time (default 25; it trains a fixed step count)",
    )

    train = command("train", cmd_train, "train the config the flags describe", [CONFIG, WORKDIR, PROGRESS])
    train.add_argument("--max-minutes", type=float, default=None, help="stop (saving a checkpoint) after this long")
    train.add_argument(
        "--profile", type=int, default=0, help="write a JAX profiler trace of this many steps to <workdir>/profile"
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-host run (jax.distributed.initialize; TPU pods, Slurm)",
    )
    train.add_argument("--coordinator-address", help="host:port of process 0 (GPU clusters, local processes)")
    train.add_argument("--num-processes", type=int, help="processes in the run (with --coordinator-address)")
    train.add_argument("--process-id", type=int, help="this process's id in [0, num-processes)")

    evaluate = command(
        "eval",
        cmd_eval,
        "stream held-out episodes through a workdir's checkpoint",
        [WORKDIR, SETS, ROLLOUTS, PROGRESS],
    )
    evaluate.add_argument("--out", help="output folder (default <workdir>/eval)")

    sweep = command(
        "sweep", cmd_sweep, "run a sweep of experiments/*.py, or print its launch commands", [SETS, PROGRESS]
    )
    sweep.add_argument("path", help="the sweep file, e.g. experiments/top_k.py")
    sweep.add_argument("--preset", help="preset of every run (default: the sweep file's PRESET)")
    sweep.add_argument(
        "--mesh", help="mesh config YAML of every run (default: the sweep file's MESH, else the preset's)"
    )
    sweep.add_argument(
        "--workdir", default="runs/sweeps", help="runs train in <workdir>/<sweep>/<run> (default runs/sweeps)"
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the launch commands instead of training")
    sweep.add_argument("--pod", help="with --dry-run: the TPU pod (VM) name to print per-host commands for")
    sweep.add_argument("--zone", help="with --pod: the TPU pod's zone")
    sweep.add_argument("--hosts", type=int, help="with --pod: hosts in the pod (default: from the mesh config)")
    sweep.add_argument(
        "--num-devices", type=int, help="device count of the mesh checks (default: what the mesh config implies)"
    )
    sweep.add_argument(
        "--compile",
        action="store_true",
        help="with --dry-run: compile each run's train step for the mesh's TPU topology (needs libtpu) and print "
        "its memory and estimated step time; a run that does not fit is not launched",
    )

    serve = command("serve", cmd_serve, "a WebSocket server over a workdir's checkpoint", [WORKDIR, SETS, AUTH_TOKEN])
    serve.add_argument("--host", help="the address to listen on (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="the port to listen on (default serve.port, 8765; 0: any free one)")
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        help="a browser page's origin that may connect, e.g. http://localhost:3000 (repeatable; none by default)",
    )

    talk = command("talk", cmd_talk, "stream a wav through a server and write the model's side", [AUTH_TOKEN])
    talk.add_argument("--server", default="ws://127.0.0.1:8765", help="the server's URL")
    talk.add_argument("--wav", required=True, help="the input wav (mono or stereo, any rate: resampled to 16 kHz)")
    talk.add_argument("--frames", help="a folder of .png/.npy frames, shown one per frame chunk in name order")
    talk.add_argument(
        "--text",
        action="append",
        default=[],
        help="typed text at a time, SECONDS:TEXT (repeatable), e.g. --text 3.2:hello",
    )
    talk.add_argument("--out", default="talk", help="output folder (default talk/)")
    talk.add_argument("--seed", type=int, default=0, help="the session's sampling seed")

    command("config", cmd_config, "print the resolved config as YAML", [CONFIG])

    plan = command("plan", cmd_plan, "parameter and memory plan from shapes", [CONFIG])
    plan.add_argument("--num-devices", type=int, help="device count (default: what the mesh config implies)")
    plan.add_argument(
        "--compile",
        action="store_true",
        help="also compile the train step and serving tick for the mesh's TPU topology (needs libtpu)",
    )
    plan.add_argument(
        "--programs",
        type=lambda text: text.split(","),
        help="with --compile: which programs to compile, comma-separated (default train,serve)",
    )
    plan.add_argument(
        "--compare",
        metavar="KEY=V1,V2",
        help="with --compile: compile once per value (e.g. model.remat=none,block)",
    )

    data = commands.add_parser("data", help="look at a synthetic episode; build the clip bank")
    actions = data.add_subparsers(dest="action", metavar="{preview,bank}", required=True)
    preview = actions.add_parser(
        "preview",
        help="write one episode's files",
        parents=[CONFIG, PROGRESS, LOGGING],
        description="write one episode's files",
    )
    preview.set_defaults(run=cmd_data_preview, parser=preview)
    preview.add_argument("--scenario", default="turn_taking", help="which scenario (see data.scenarios)")
    preview.add_argument("--seed", type=int, default=0, help="the episode seed")
    preview.add_argument(
        "--split", choices=("train", "heldout"), default="train", help="voices and sentences of this split"
    )
    preview.add_argument("--out", default="preview", help="output folder (default preview/)")
    bank = actions.add_parser(
        "bank",
        help="build (or find) the clip bank",
        parents=[CONFIG, PROGRESS, LOGGING],
        description="build (or find) the clip bank",
    )
    bank.set_defaults(run=cmd_data_bank, parser=bank)
    return parser, list(commands.choices)


# ----------------------------------------------------------------------------------------------
# Commands


def resolve_config(args: argparse.Namespace, purpose: Literal["all", "train"] = "all") -> config_lib.Config:
    """The config the flags describe: preset, then --config YAML, then --mesh, then --set overrides,
    validated for `purpose` (`config.validate`)."""
    cfg = config_lib.preset(args.preset)
    if args.config:
        cfg = config_lib.load_yaml(args.config, cfg)
    if args.mesh:
        cfg = dataclasses.replace(cfg, mesh=config_lib.load_mesh(args.mesh))
    from interaction_jax.data import scenarios

    cfg = config_lib.validate(config_lib.override(cfg, args.sets), purpose=purpose)
    scenarios.check_mix(cfg)  # the names in data.scenarios: the config cannot know them (it knows nothing of data)
    return cfg


def cmd_config(args: argparse.Namespace) -> None:
    print(config_lib.dump_yaml(resolve_config(args)), end="")


def cmd_plan(args: argparse.Namespace) -> None:
    from interaction_jax import plan

    if not args.compile and (args.programs or args.compare):
        raise UsageError(f"{'--programs' if args.programs else '--compare'} only applies with --compile")
    cfg = resolve_config(args)
    num_devices, fixed = config_lib.mesh_device_count(cfg.mesh, args.num_devices)
    if not fixed:  # a -1 axis: plan for the devices this process sees
        import jax

        num_devices = jax.device_count()
    print(plan.make_plan(cfg, num_devices).table())
    if not args.compile:
        return
    from interaction_jax import aot

    programs = args.programs or ["train", "serve"]
    try:
        if args.compare:
            key, _, values = args.compare.partition("=")
            reports = aot.compare(cfg, key, values.split(","), programs)
        else:
            reports = [aot.compile_plan(cfg, programs)]
    except aot.LibtpuMissing as e:
        print(f"plan --compile: {e}", file=sys.stderr)
        sys.exit(1)
    for report in reports:
        print()
        print(report.table())
    failures = [message for report in reports for message in report.does_not_fit]
    for message in failures:
        print(f"plan --compile: {message}", file=sys.stderr)
    if failures:
        sys.exit(1)


def cmd_data_preview(args: argparse.Namespace) -> None:
    """`data preview` writes one episode's files."""
    from interaction_jax.data import pipeline, preview, scenarios

    cfg = resolve_config(args)
    if args.scenario not in scenarios.names():
        raise config_lib.ConfigError(
            "--scenario", f"unknown scenario {args.scenario!r}", f"use one of {list(scenarios.names())}"
        )
    bank = pipeline.clip_source(cfg, args.progress)
    ep, paths = preview.write_preview(cfg, args.scenario, args.seed, args.out, bank, args.split)
    print(f"{args.scenario} seed {args.seed} ({args.split}): {ep.num_chunks} chunks → {args.out}/")
    for name, path in paths.items():
        print(f"  {name:10s} {path}")


def cmd_data_bank(args: argparse.Namespace) -> None:
    """`data bank` builds (or finds) the clip bank and says where it is."""
    from interaction_jax.data import pipeline

    bank = pipeline.clip_source(resolve_config(args), args.progress)
    size = sum(f.stat().st_size for f in bank.folder.rglob("*") if f.is_file())
    print(f"clip bank: {len(bank)} clips, {size / 2**20:.1f} MiB, at {bank.folder}")


def _load_checkpoint(args: argparse.Namespace):
    """(config, params, step) of a workdir's checkpoint for eval and serve, with the --set overrides on top:
    the checkpoint fixes the model and stream, so their keys are refused; serve.* (sampling, clock,
    agent) and the other sections apply."""
    from interaction_jax.train import checkpoint

    shape_keys = [s for s in args.sets if s.split("=", 1)[0].split(".", 1)[0] in checkpoint.SHAPE_SECTIONS]
    if shape_keys:
        raise config_lib.ConfigError(
            shape_keys[0].split("=", 1)[0], "the checkpoint fixes the model and stream", "set serve.* keys only"
        )
    cfg, params, step = checkpoint.load_params(args.workdir)
    return config_lib.validate(config_lib.override(cfg, args.sets), purpose="serve"), params, step


def cmd_train(args: argparse.Namespace) -> None:
    from interaction_jax.train import distributed

    distributed.initialize(args.distributed, args.coordinator_address, args.num_processes, args.process_id)
    import jax

    from interaction_jax.data import pipeline
    from interaction_jax.eval.probe import BehaviourProbe
    from interaction_jax.train import loop

    cfg = resolve_config(args, purpose="train")
    clips = pipeline.clip_source(cfg, args.progress and jax.process_index() == 0)
    probe = None
    if cfg.train.behaviour_episodes and cfg.train.eval_every and jax.process_count() == 1:
        probe = BehaviourProbe(cfg, clips, cfg.train.behaviour_episodes)
    result = loop.train(
        cfg,
        args.workdir,
        progress=args.progress,
        max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
        profile_steps=args.profile,
        clips=clips,
        probe=probe,
    )
    held = "—" if result.heldout_loss is None else f"{result.heldout_loss:.4f}"
    state = "stopped early (checkpoint saved)" if result.preempted else "done"
    rate = "—" if result.tokens_per_s is None else f"{result.tokens_per_s:,.0f}"
    print(
        f"{state}: step {result.step}, loss {result.loss:.4f}, held-out loss {held}, "
        f"{rate} tokens/s, {result.seconds:.0f} s → {args.workdir}"
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from interaction_jax import eval as eval_lib

    cfg, params, step = _load_checkpoint(args)
    out = args.out or f"{args.workdir}/eval"
    report = eval_lib.evaluate(
        cfg, params, out, episodes_per_scenario=args.episodes, rollout_seeds=args.seeds, progress=args.progress
    )
    print(
        f"step {step} of {args.workdir}, {args.episodes} held-out episode(s) per scenario × {args.seeds} seed(s) "
        f"→ {out}/"
    )
    print(eval_lib.sampling_summary(cfg))
    print(report.table())
    print()
    print(report.gate_table())


def cmd_demo(args: argparse.Namespace) -> None:
    from interaction_jax import demo

    demo.run_demo(
        args.out,
        max_minutes=demo.DEFAULT_MAX_MINUTES if args.max_minutes is None else args.max_minutes,
        preset=args.preset,
        sets=tuple(args.sets),
        episodes_per_scenario=args.episodes,
        rollout_seeds=args.seeds,
        progress=args.progress,
    )


def cmd_sweep(args: argparse.Namespace) -> None:
    from interaction_jax import sweep

    missing_libtpu: tuple[type[Exception], ...] = ()  # nothing to catch: without --compile, JAX stays unloaded
    if args.compile:
        from interaction_jax import aot

        missing_libtpu = (aot.LibtpuMissing,)
    try:
        results = sweep.run_sweep_command(
            args.path,
            preset=args.preset,
            sets=list(args.sets),
            workdir_root=args.workdir,
            dry_run=args.dry_run,
            pod=args.pod,
            zone=args.zone,
            mesh=args.mesh,
            hosts=args.hosts,
            num_devices=args.num_devices,
            compile_step=args.compile,
            progress=args.progress,
        )
    except missing_libtpu as e:
        print(f"sweep --compile: {e}", file=sys.stderr)
        sys.exit(1)
    if any(r.status == "failed" for r in results):
        sys.exit(1)


def _auth_token(args: argparse.Namespace) -> str | None:
    return args.auth_token or os.environ.get("INTERACTION_JAX_AUTH_TOKEN") or None


def cmd_serve(args: argparse.Namespace) -> None:
    import asyncio

    from interaction_jax.serve import server

    # Refused before the model loads and compiles (tens of seconds): the address as --host or --set gives it.
    hosts = [args.host] + [a.split("=", 1)[1] for a in reversed(args.sets) if a.startswith("serve.host=")]
    try:
        server.check_bind(next((h for h in hosts if h is not None), config_lib.ServeConfig.host), _auth_token(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
    cfg, params, step = _load_checkpoint(args)
    if args.allow_origin:  # browser pages that may connect, on top of serve.allowed_origins
        origins = (*cfg.serve.allowed_origins, *args.allow_origin)
        cfg = config_lib.validate(
            dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, allowed_origins=origins)), purpose="serve"
        )
    print(f"step {step} of {args.workdir}", flush=True)
    try:
        asyncio.run(server.serve_forever(cfg, params, host=args.host, port=args.port, auth_token=_auth_token(args)))
    except server.ServerFailed as e:
        sys.exit(f"serve: {e}")


def cmd_talk(args: argparse.Namespace) -> None:
    import asyncio

    from interaction_jax.serve import client

    try:
        texts = [client.parse_text_arg(t) for t in args.text]
    except ValueError as e:
        raise UsageError(str(e)) from None
    audio = client.read_input(args.wav, client.SAMPLE_RATE)
    result = asyncio.run(
        client.talk(
            args.server, audio, args.out, frames=args.frames, texts=texts, token=_auth_token(args), seed=args.seed
        )
    )
    said = "".join(r.text for r in result.replies)
    events = [e["type"] for r in result.replies for e in r.events if e["type"] != "speaking"]
    print(f"{len(result.replies)} chunks → {args.out}/output.wav, timeline.json, timeline.png")
    print(f"model text: {said!r}" + (f"; events: {', '.join(events)}" if events else ""))


# ----------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str]) -> None:
    """Run the command `argv` (without the program name) names; exit 2 on a config or flag error, 1 on
    a usage error the command finds (each with the message on the last line of stderr)."""
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        print(f"usage: {PROG} <command> [flags]; commands: {', '.join(commands)}", file=sys.stderr)
        sys.exit(2)
    if unknown:  # named by the command's own parser, whose usage lists the flags it does take
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from absl import flags, logging

    # JAX's INFO chatter (e.g. "no TPU backend") is not for users; grain reads absl's (default) flags.
    flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(args.log_level)
    try:
        args.run(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    main(sys.argv[1:])


if __name__ == "__main__":
    run()
