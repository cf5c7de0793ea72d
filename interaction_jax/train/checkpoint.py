"""Checkpoints: train state + data iterator + config in one orbax step, restorable onto any mesh.

A step folder holds three items: `state` (the TrainState, saved asynchronously: the loop goes on while
the arrays are written), `data` (each process's grain iterator state, via grain's orbax handler) and
`config` (the full config as JSON). Restoring goes through an abstract state whose leaves carry the
*target* shardings, so a checkpoint written on one mesh loads onto another. A step that cannot be read
(a truncated or missing file) is reported, moved aside to `<workdir>/corrupt_checkpoints/`, and the
step before it is used.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from interaction_jax import config as config_lib
from interaction_jax.config import Config, ConfigError

# Config sections that decide the parameters' shapes: a checkpoint only resumes under the same ones.
SHAPE_SECTIONS = ("model", "stream")


# Replicated arrays are written by all their replicas in parallel, each a slice, only above 1 MiB: below
# that, slicing (one dispatch, and one compile per shape and sharding) costs more than the bandwidth saves.
_ARRAY_HANDLERS = ocp.type_handlers.create_type_handler_registry(
    (jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20))
)


class CheckpointWarning(UserWarning):
    """A checkpoint step could not be read and an earlier one is used instead."""


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def _manager(workdir: str | Path, keep: int | None = None, async_save: bool = True, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,  # orbax warns when a read-only manager has an interval
    )
    handlers = {
        # PyTree rather than Standard: only it can restore the params alone (`load_params`).
        "state": ocp.PyTreeCheckpointHandler(type_handler_registry=_ARRAY_HANDLERS),
        "data": grain.checkpoint.CheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(
        checkpoint_dir(workdir).absolute(), options=options, item_names=tuple(handlers), item_handlers=handlers
    )


def as_trained(saved: dict) -> dict:
    """A checkpoint's saved config dict with the keys added since it was written set as it was trained:
    only those whose default changes what the model computes (`model.hear_own_voice` was on before)."""
    model = saved.get("model", {})
    if "hear_own_voice" not in model:
        saved = saved | {"model": model | {"hear_own_voice": True}}
    return saved


def config_of_saved(saved: dict) -> Config:
    """The config a checkpoint was trained with, from its saved config dict."""
    return config_lib.from_dict(as_trained(saved))


def check_compatible(saved: dict, cfg: Config, where: Path) -> None:
    """Raise ConfigError when `saved` (a checkpoint's config) has other parameter shapes than `cfg`, or
    keeps a moving average of them where `cfg` does not (or the other way round)."""
    saved, current = as_trained(saved), config_lib.to_dict(cfg)
    for section in SHAPE_SECTIONS:
        diff = sorted(k for k in current[section] if saved.get(section, {}).get(k) != current[section][k])
        if diff:
            was = saved.get(section, {})
            keys = ", ".join(f"{section}.{k} ({was.get(k)!r} → {current[section][k]!r})" for k in diff)
            raise ConfigError(
                f"{section}.{diff[0]}",
                f"the checkpoint in {where} was trained with a different {section}: {keys}",
                "use a fresh --workdir, or the config the checkpoint was written with",
            )
    kept = saved.get("train", {}).get("ema_decay", 0.0) > 0  # a checkpoint from before the key kept none
    if kept != (cfg.train.ema_decay > 0):
        raise ConfigError(
            "train.ema_decay",
            f"the checkpoint in {where} holds {'a' if kept else 'no'} moving average of the parameters, "
            f"and train.ema_decay={cfg.train.ema_decay} {'keeps none' if kept else 'keeps one'}",
            "resume with the checkpoint's train.ema_decay (any decay > 0 goes on from its average), or use a "
            "fresh --workdir",
        )


class Checkpoints:
    """The checkpoints of one workdir: save every step it is asked to, keep the last `keep`."""

    def __init__(self, workdir: str | Path, *, keep: int = 3, async_save: bool = True):
        self.workdir = Path(workdir)
        self.manager = _manager(workdir, keep, async_save)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any, cfg: Config) -> None:
        """Start saving; returns once the arrays are copied off the devices (writing continues behind)."""
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config_lib.to_dict(cfg)),
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, abstract_state: Any, data_iterator: Any, cfg: Config) -> tuple[Any, int] | None:
        """The newest readable checkpoint as (state, step), the iterator set to its position; None if there is none.

        `abstract_state`: ShapeDtypeStructs with the target shardings. Unreadable steps are moved aside
        with a CheckpointWarning, newest first, until one loads.
        """
        for step in reversed(self.steps()):
            try:
                saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
                check_compatible(saved, cfg, self.manager.directory / str(step))
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=_restore_args(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                    ),
                )
            except ConfigError:
                raise
            except Exception as e:  # any read failure means this step is unusable
                self._set_aside(step, e)
                continue
            return restored["state"], step
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        src = self.manager.directory / str(step)
        dst = self.workdir / "corrupt_checkpoints" / str(step)
        earlier = [s for s in self.steps() if s < step]
        reason = (str(error).splitlines() or [""])[0][:200]
        then = f"falling back to step {earlier[-1]}" if earlier else "no earlier checkpoint: starting from scratch"
        warnings.warn(
            f"checkpoint step {step} in {src} is unreadable ({type(error).__name__}: {reason}); "
            f"moved it to {dst}; {then}",
            CheckpointWarning,
            stacklevel=3,
        )
        if jax.process_index() == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            shutil.move(str(src), str(dst))
        self.manager.reload()

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _restore_args(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore onto exactly the shapes, dtypes and shardings of `abstract` (a tree of ShapeDtypeStructs)."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    return ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=partial)


def _latest(manager, workdir: str | Path, step: int | None) -> int:
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    return step


def _saved_config(manager, step: int) -> Config:
    return config_of_saved(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


def load_config(workdir: str | Path, step: int | None = None) -> Config:
    """The config a workdir's checkpoint (the latest by default) was trained with."""
    with contextlib.closing(_manager(workdir, read_only=True)) as manager:
        return _saved_config(manager, _latest(manager, workdir, step))


def load_params(workdir: str | Path, step: int | None = None, *, average: bool = True) -> tuple[Config, Any, int]:
    """(config, params, step) of a workdir's checkpoint, the params on the default device (for eval/serving).

    Only the parameters are read, not the optimizer state: those training evaluated, i.e. their moving
    average when the run kept one (`train.ema_decay` > 0; `average=False`: the trained ones).
    """
    from interaction_jax.model import step as step_lib

    with contextlib.closing(_manager(workdir, read_only=True)) as manager:
        step = _latest(manager, workdir, step)
        cfg = _saved_config(manager, step)
        device = SingleDeviceSharding(jax.devices()[0])
        shapes = jax.eval_shape(lambda: step_lib.init_params(cfg, jax.random.key(0)))
        key = "ema_params" if average and cfg.train.ema_decay > 0 else "params"
        item = {key: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)}
        restored = manager.restore(step, args=ocp.args.Composite(state=_restore_args(item, partial=True)))
    return cfg, restored["state"][key], step
