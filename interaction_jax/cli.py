"""The `interaction-jax` command: `interaction-jax <command> [flags]`.

Commands: `demo` (the main job: train tiny, then stream held-out episodes through it), `train`,
`eval` (stream held-out episodes through a workdir's checkpoint), `sweep` (run or print a sweep of
experiments/*.py), `serve` (a WebSocket server over a workdir's checkpoint), `talk` (stream a
wav through a server and write the model's side), `config` (print the resolved config), `plan`
(parameter and memory plan from shapes; with `--compile`, the deviceless TPU compile of the train step
and serving tick) and `data preview|bank` (look at a synthetic episode; build the clip bank). Every
command shares the config flags: --preset, --config, --mesh, --set.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags, logging

from interaction_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny", f"config preset: {', '.join(config_lib.PRESETS)}")
flags.DEFINE_string("config", None, "YAML file of config keys applied on top of the preset")
flags.DEFINE_string("mesh", None, "mesh config YAML (mesh_configs/*.yaml); default: the preset's")
flags.DEFINE_multi_string("set", [], "override a config key: --set model.d_model=256 (repeatable)")
flags.DEFINE_integer("num_devices", None, "plan: device count (default: what the mesh config implies)")
flags.DEFINE_bool(
    "compile", False, "plan: also compile the train step and serving tick for the mesh's TPU topology (needs libtpu)"
)
flags.DEFINE_list("programs", ["train", "serve"], "plan --compile: which programs to compile (train, serve)")
flags.DEFINE_string(
    "compare", None, "plan --compile: compile once per value of KEY=V1,V2,… (e.g. model.remat=none,block)"
)
flags.DEFINE_string("scenario", "turn_taking", "data preview: which scenario (see data.scenarios)")
flags.DEFINE_integer("seed", 0, "data preview: the episode seed; talk: the session's sampling seed")
flags.DEFINE_enum("split", "train", ["train", "heldout"], "data preview: voices and sentences of this split")
flags.DEFINE_string("out", None, "output folder (default: preview/ for data preview, demo/ for demo, <workdir>/eval)")
flags.DEFINE_string("workdir", None, "train/eval: the run's folder (checkpoints, metrics.jsonl); sweep: the root")
flags.DEFINE_float(
    "max-minutes",
    None,
    "demo: safety cap on its wall time (default 25; it trains a fixed step count); train: stop after it",
)
flags.DEFINE_integer("episodes", 4, "demo/eval: held-out episodes per scenario")
flags.DEFINE_integer("seeds", 2, "demo/eval: rollout (sampling) seeds per episode")
flags.DEFINE_integer("profile", 0, "train: write a JAX profiler trace of this many steps to <workdir>/profile")
flags.DEFINE_bool("progress", True, "show progress bars")
flags.DEFINE_bool("distributed", False, "train: join a multi-host run (jax.distributed.initialize; TPU pods, Slurm)")
flags.DEFINE_string("coordinator_address", None, "train: host:port of process 0 (GPU clusters, local processes)")
flags.DEFINE_integer("num_processes", None, "train: processes in the run (with --coordinator_address)")
flags.DEFINE_integer("process_id", None, "train: this process's id in [0, num_processes)")
flags.DEFINE_bool("dry-run", False, "sweep: print the launch commands instead of training")
flags.DEFINE_string("pod", None, "sweep --dry-run: the TPU pod (VM) name to print per-host commands for")
flags.DEFINE_string("zone", None, "sweep --dry-run: the TPU pod's zone")
flags.DEFINE_integer("hosts", None, "sweep --dry-run: hosts in the pod (default: from the mesh config)")
flags.DEFINE_string("host", None, "serve: the address to listen on (default serve.host, 127.0.0.1)")
flags.DEFINE_integer("port", None, "serve: the port to listen on (default serve.port, 8765; 0: any free one)")
flags.DEFINE_string(
    "auth-token", None, "serve: clients must send this token (needed to bind beyond loopback); talk: send it"
)
flags.DEFINE_multi_string(
    "allow-origin",
    [],
    "serve: a browser page's origin that may connect, e.g. http://localhost:3000 (repeatable; none by default)",
)
flags.DEFINE_string("server", "ws://127.0.0.1:8765", "talk: the server's URL")
flags.DEFINE_string("wav", None, "talk: the input wav (mono or stereo, any rate: resampled to 16 kHz)")
flags.DEFINE_string("frames", None, "talk: a folder of .png/.npy frames, shown one per frame chunk in name order")
flags.DEFINE_multi_string("text", [], "talk: typed text at a time, SECONDS:TEXT (repeatable), e.g. --text 3.2:hello")


def resolve_config() -> config_lib.Config:
    """The config the flags describe: preset, then --config YAML, then --mesh, then --set overrides."""
    cfg = config_lib.preset(FLAGS.preset)
    if FLAGS.config:
        cfg = config_lib.load_yaml(FLAGS.config, cfg)
    if FLAGS.mesh:
        cfg = dataclasses.replace(cfg, mesh=config_lib.load_mesh(FLAGS.mesh))
    from interaction_jax.data import scenarios

    cfg = config_lib.validate(config_lib.override(cfg, FLAGS.set))
    scenarios.check_mix(cfg)  # the names in data.scenarios: the config cannot know them (it knows nothing of data)
    return cfg


def cmd_config(argv: list[str]) -> None:
    print(config_lib.dump_yaml(resolve_config()), end="")


def cmd_plan(argv: list[str]) -> None:
    from interaction_jax import plan

    cfg = resolve_config()
    num_devices, fixed = config_lib.mesh_device_count(cfg.mesh, FLAGS.num_devices)
    if not fixed:  # a -1 axis: plan for the devices this process sees
        import jax

        num_devices = jax.device_count()
    print(plan.make_plan(cfg, num_devices).table())
    if not FLAGS.compile:
        return
    from interaction_jax import aot

    try:
        if FLAGS.compare:
            key, _, values = FLAGS.compare.partition("=")
            reports = aot.compare(cfg, key, values.split(","), FLAGS.programs)
        else:
            reports = [aot.compile_plan(cfg, FLAGS.programs)]
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


def cmd_data(argv: list[str]) -> None:
    """`data preview` writes one episode's files; `data bank` builds (or finds) the clip bank."""
    from interaction_jax.data import pipeline, preview, scenarios

    actions = ("preview", "bank")
    if not argv or argv[0] not in actions:
        raise app.UsageError(f"usage: interaction-jax data {{{'|'.join(actions)}}} [flags]")
    cfg = resolve_config()
    if FLAGS.scenario not in scenarios.names():
        raise config_lib.ConfigError(
            "--scenario", f"unknown scenario {FLAGS.scenario!r}", f"use one of {list(scenarios.names())}"
        )
    bank = pipeline.clip_source(cfg)
    if argv[0] == "bank":
        size = sum(f.stat().st_size for f in bank.folder.rglob("*") if f.is_file())
        print(f"clip bank: {len(bank)} clips, {size / 2**20:.1f} MiB, at {bank.folder}")
        return
    out = FLAGS.out or "preview"
    ep, paths = preview.write_preview(cfg, FLAGS.scenario, FLAGS.seed, out, bank, FLAGS.split)
    print(f"{FLAGS.scenario} seed {FLAGS.seed} ({FLAGS.split}): {ep.num_chunks} chunks → {out}/")
    for name, path in paths.items():
        print(f"  {name:10s} {path}")


def _require_workdir(command: str) -> str:
    if not FLAGS.workdir:
        raise app.UsageError(f"interaction-jax {command} needs --workdir (the run's folder)")
    return FLAGS.workdir


def _load_checkpoint(workdir: str):
    """(config, params, step) of a workdir's checkpoint for eval and serve, with the --set overrides on top:
    the checkpoint fixes the model and stream, so their keys are refused; serve.* (sampling, clock,
    agent) and the other sections apply."""
    from interaction_jax.train import checkpoint

    shape_keys = [s for s in FLAGS.set if s.split("=", 1)[0].split(".", 1)[0] in checkpoint.SHAPE_SECTIONS]
    if shape_keys:
        raise config_lib.ConfigError(
            shape_keys[0].split("=", 1)[0], "the checkpoint fixes the model and stream", "set serve.* keys only"
        )
    cfg, params, step = checkpoint.load_params(workdir)
    return config_lib.validate(config_lib.override(cfg, FLAGS.set), purpose="serve"), params, step


def cmd_train(argv: list[str]) -> None:
    from interaction_jax.train import distributed

    workdir = _require_workdir("train")
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    import jax

    from interaction_jax.data import pipeline
    from interaction_jax.eval.probe import BehaviourProbe
    from interaction_jax.train import loop

    cfg = resolve_config()
    minutes = FLAGS["max-minutes"].value
    clips = pipeline.clip_source(cfg, FLAGS.progress and jax.process_index() == 0)
    probe = None
    if cfg.train.behaviour_episodes and cfg.train.eval_every and jax.process_count() == 1:
        probe = BehaviourProbe(cfg, clips, cfg.train.behaviour_episodes)
    result = loop.train(
        cfg,
        workdir,
        progress=FLAGS.progress,
        max_seconds=None if minutes is None else 60.0 * minutes,
        profile_steps=FLAGS.profile,
        clips=clips,
        probe=probe,
    )
    held = "—" if result.heldout_loss is None else f"{result.heldout_loss:.4f}"
    state = "stopped early (checkpoint saved)" if result.preempted else "done"
    rate = "—" if result.tokens_per_s is None else f"{result.tokens_per_s:,.0f}"
    print(
        f"{state}: step {result.step}, loss {result.loss:.4f}, held-out loss {held}, "
        f"{rate} tokens/s, {result.seconds:.0f} s → {workdir}"
    )


def cmd_eval(argv: list[str]) -> None:
    from interaction_jax import eval as eval_lib

    workdir = _require_workdir("eval")
    cfg, params, step = _load_checkpoint(workdir)
    out = FLAGS.out or f"{workdir}/eval"
    report = eval_lib.evaluate(
        cfg, params, out, episodes_per_scenario=FLAGS.episodes, rollout_seeds=FLAGS.seeds, progress=FLAGS.progress
    )
    print(
        f"step {step} of {workdir}, {FLAGS.episodes} held-out episode(s) per scenario × {FLAGS.seeds} seed(s) → {out}/"
    )
    print(eval_lib.sampling_summary(cfg))
    print(report.table())
    print()
    print(report.gate_table())


def cmd_demo(argv: list[str]) -> None:
    from interaction_jax import demo

    minutes = FLAGS["max-minutes"].value
    demo.run_demo(
        FLAGS.out or "demo",
        max_minutes=demo.DEFAULT_MAX_MINUTES if minutes is None else minutes,
        preset=FLAGS.preset,
        sets=tuple(FLAGS.set),
        episodes_per_scenario=FLAGS.episodes,
        rollout_seeds=FLAGS.seeds,
        progress=FLAGS.progress,
    )


def cmd_sweep(argv: list[str]) -> None:
    from interaction_jax import sweep

    if len(argv) != 1:
        raise app.UsageError("usage: interaction-jax sweep experiments/<sweep>.py [--dry-run --pod NAME] [--set k=v]")
    if FLAGS.config:
        raise app.UsageError("sweep takes no --config: put shared overrides in the sweep file's BASE, or use --set")
    results = sweep.run_sweep_command(
        argv[0],
        preset=FLAGS["preset"].value if FLAGS["preset"].present else None,
        sets=list(FLAGS.set),
        workdir_root=FLAGS.workdir or "runs/sweeps",
        dry_run=FLAGS["dry-run"].value,
        pod=FLAGS.pod,
        zone=FLAGS.zone,
        mesh=FLAGS.mesh,
        hosts=FLAGS.hosts,
        num_devices=FLAGS.num_devices,
        progress=FLAGS.progress,
    )
    if any(r.status == "failed" for r in results):
        sys.exit(1)


def _auth_token() -> str | None:
    return FLAGS["auth-token"].value or os.environ.get("INTERACTION_JAX_AUTH_TOKEN") or None


def cmd_serve(argv: list[str]) -> None:
    import asyncio

    from interaction_jax.serve import server

    workdir = _require_workdir("serve")
    # Refused before the model loads and compiles (tens of seconds): the address as --host or --set gives it.
    hosts = [FLAGS.host] + [a.split("=", 1)[1] for a in reversed(FLAGS.set) if a.startswith("serve.host=")]
    try:
        server.check_bind(next((h for h in hosts if h is not None), config_lib.ServeConfig.host), _auth_token())
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    cfg, params, step = _load_checkpoint(workdir)
    if FLAGS["allow-origin"].value:  # browser pages that may connect, on top of serve.allowed_origins
        origins = (*cfg.serve.allowed_origins, *FLAGS["allow-origin"].value)
        cfg = config_lib.validate(
            dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, allowed_origins=origins)), purpose="serve"
        )
    print(f"step {step} of {workdir}", flush=True)
    try:
        asyncio.run(server.serve_forever(cfg, params, host=FLAGS.host, port=FLAGS.port, auth_token=_auth_token()))
    except server.ServerFailed as e:
        sys.exit(f"serve: {e}")


def cmd_talk(argv: list[str]) -> None:
    import asyncio

    from interaction_jax.serve import client

    if not FLAGS.wav:
        raise app.UsageError(
            "usage: interaction-jax talk --server ws://HOST:PORT --wav in.wav [--frames DIR] --out out/"
        )
    try:
        texts = [client.parse_text_arg(t) for t in FLAGS.text]
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    out = FLAGS.out or "talk"
    audio = client.read_input(FLAGS.wav, client.SAMPLE_RATE)
    result = asyncio.run(
        client.talk(FLAGS.server, audio, out, frames=FLAGS.frames, texts=texts, token=_auth_token(), seed=FLAGS.seed)
    )
    said = "".join(r.text for r in result.replies)
    events = [e["type"] for r in result.replies for e in r.events if e["type"] != "speaking"]
    print(f"{len(result.replies)} chunks → {out}/output.wav, timeline.json, timeline.png")
    print(f"model text: {said!r}" + (f"; events: {', '.join(events)}" if events else ""))


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "eval": cmd_eval,
    "sweep": cmd_sweep,
    "serve": cmd_serve,
    "talk": cmd_talk,
    "config": cmd_config,
    "plan": cmd_plan,
    "data": cmd_data,
}


def main(argv: list[str]) -> None:
    if not FLAGS["verbosity"].present:  # JAX's INFO chatter (e.g. "no TPU backend") is not for users
        logging.set_verbosity(logging.WARNING)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: interaction-jax <command> [flags]; commands: {', '.join(COMMANDS)}")
    try:
        COMMANDS[argv[1]](argv[2:])
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
