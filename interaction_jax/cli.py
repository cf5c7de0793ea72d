"""The `interaction-jax` command: `interaction-jax <command> [flags]`.

Commands available now: `config` (print the resolved config), `plan` (parameter and memory plan
from shapes) and `data preview|bank` (look at a synthetic episode; build the clip bank). Every
command shares the config flags: --preset, --config, --mesh, --set.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from interaction_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny", f"config preset: {', '.join(config_lib.PRESETS)}")
flags.DEFINE_string("config", None, "YAML file of config keys applied on top of the preset")
flags.DEFINE_string("mesh", None, "mesh config YAML (mesh_configs/*.yaml); default: the preset's")
flags.DEFINE_multi_string("set", [], "override a config key: --set model.d_model=256 (repeatable)")
flags.DEFINE_integer("num_devices", None, "plan: device count (default: what the mesh config implies)")
flags.DEFINE_string("scenario", "turn_taking", "data preview: which scenario (see data.scenarios)")
flags.DEFINE_integer("seed", 0, "data preview: the episode seed")
flags.DEFINE_enum("split", "train", ["train", "heldout"], "data preview: voices and sentences of this split")
flags.DEFINE_string("out", "preview", "data preview: output folder")


def resolve_config() -> config_lib.Config:
    """The config the flags describe: preset, then --config YAML, then --mesh, then --set overrides."""
    cfg = config_lib.preset(FLAGS.preset)
    if FLAGS.config:
        cfg = config_lib.load_yaml(FLAGS.config, cfg)
    if FLAGS.mesh:
        cfg = dataclasses.replace(cfg, mesh=config_lib.load_mesh(FLAGS.mesh))
    return config_lib.validate(config_lib.override(cfg, FLAGS.set))


def cmd_config(argv: list[str]) -> None:
    print(config_lib.dump_yaml(resolve_config()), end="")


def cmd_plan(argv: list[str]) -> None:
    from interaction_jax import plan

    cfg = resolve_config()
    num_devices = FLAGS.num_devices or plan.default_device_count(cfg.mesh)
    if num_devices is None:  # a -1 axis: plan for the devices this process sees
        import jax

        num_devices = jax.device_count()
    print(plan.make_plan(cfg, num_devices).table())


def cmd_data(argv: list[str]) -> None:
    """`data preview` writes one episode's files; `data bank` builds (or finds) the clip bank."""
    from interaction_jax.data import pipeline, preview

    actions = ("preview", "bank")
    if not argv or argv[0] not in actions:
        raise app.UsageError(f"usage: interaction-jax data {{{'|'.join(actions)}}} [flags]")
    cfg = resolve_config()
    if FLAGS.scenario not in config_lib.SCENARIOS:
        raise config_lib.ConfigError(
            "--scenario", f"unknown scenario {FLAGS.scenario!r}", f"use one of {list(config_lib.SCENARIOS)}"
        )
    bank = pipeline.clip_source(cfg)
    if argv[0] == "bank":
        size = sum(f.stat().st_size for f in bank.folder.rglob("*") if f.is_file())
        print(f"clip bank: {len(bank)} clips, {size / 2**20:.1f} MiB, at {bank.folder}")
        return
    ep, paths = preview.write_preview(cfg, FLAGS.scenario, FLAGS.seed, FLAGS.out, bank, FLAGS.split)
    print(f"{FLAGS.scenario} seed {FLAGS.seed} ({FLAGS.split}): {ep.num_chunks} chunks → {FLAGS.out}/")
    for name, path in paths.items():
        print(f"  {name:10s} {path}")


COMMANDS = {"config": cmd_config, "plan": cmd_plan, "data": cmd_data}


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
