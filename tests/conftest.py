"""Test session set-up: 8 fake CPU devices for the sharding tests and the CPU compiler's cheaper code
generation, set before JAX is imported; one persistent compilation cache; the slow tests first.

The compilation cache (`tmp/jax_cache`, unless JAX_COMPILATION_CACHE_DIR is set) is shared by the
xdist workers and the CLI subprocesses the tests start (they inherit the environment), and kept
between runs: a program compiled once is read back (a fresh clone starts with it empty). An entry is
keyed by the program, the compile options and the JAX version, so a stale one is never used; it is
not size-capped (that needs `filelock`): delete the folder to reclaim the space.

Under xdist's default `--dist load`, the modules in SHARED_FIXTURE_MODULES (costly module fixtures: a
training run, a trained workdir, a warmed-up engine, the deviceless TPU compiles, one model's weights
and gradients that several tests compare against) each go to one worker as a unit, so the fixture is
built once rather than once per worker; a test in SOLO_TESTS (a long one that uses none of its module's
fixtures) leaves its module's unit, so that the other worker can take it; every other test is
load-balanced alone. (Not `--dist
loadgroup` with `xdist_group` marks: with pytest 9.2 and xdist 3.8 it silently stops grouping,
pytest-dev/pytest-xdist#1386.)
"""

import os
from pathlib import Path


def _xla_has_flag(name: str) -> bool:
    """Whether the installed jaxlib's XLA defines the flag `name`, read from its shared libraries without
    loading them: XLA aborts the process on an unknown flag in XLA_FLAGS, so a flag that a later jaxlib
    drops must not be set there."""
    import importlib.util
    import mmap

    spec = importlib.util.find_spec("jaxlib")
    for folder in spec.submodule_search_locations if spec else ():
        for library in Path(folder).glob("*.so"):
            with library.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
                if image.find(name.encode()) >= 0:
                    return True
    return False


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The CPU backend's LLVM optimisation off, unless XLA_FLAGS sets a level: the suite's programs are small
# and run a few times, so optimising their machine code costs more than it saves (a scanned model's loss
# and gradients: 83 s -> 56 s). It changes only how the CPU code is generated, not the HLO's passes.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# The CPU backend's legacy fusion emitters, unless XLA_FLAGS chooses: they generate a fusion's code in a
# third of the time of the newer MLIR emitters, and the suite is mostly compiling (the whole suite on 2
# cores, fresh cache: 12 min 28 s -> 9 min 5 s; docs/results.md). Like the level above it changes only
# the code generated for each fusion, not the HLO; the bitwise tests pass either way.
if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"] and _xla_has_flag("xla_cpu_use_fusion_emitters"):
    os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / "tmp" / "jax_cache"))
# Cache every program, not only those that took a second to compile: most of the suite's programs are
# small, and each is compiled again by the other worker and by every CLI subprocess otherwise.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402 (after XLA_FLAGS is set)
import pytest  # noqa: E402

SHARED_FIXTURE_MODULES = {
    f"tests/test_{name}.py"
    for name in (
        *("train_runs", "silence", "eval_cli", "serve", "serve_limits", "eval", "train", "layers", "model"),
        *("plan_compile", "scan", "alignment", "notebooks", "probe_forward", "decision", "edits", "ema"),
    )
}
SOLO_TESTS = {"tests/test_scan.py::test_bitwise_alignment_holds_for_the_scanned_model"}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` runs without it
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist mode is left to xdist
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureModules(LoadScopeScheduling):
        """Load balancing by test, but a module of SHARED_FIXTURE_MODULES is one unit (sent first:
        units go out largest first)."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_FIXTURE_MODULES and nodeid not in SOLO_TESTS else nodeid

    return SharedFixtureModules(config, log)


def pytest_collection_modifyitems(config, items):
    backend = jax.default_backend()
    for item in items:
        for marker in ("gpu", "tpu"):
            if marker in item.keywords and backend != marker:
                item.add_marker(pytest.mark.skip(reason=f"needs a {marker.upper()}"))
    # Modules with slow tests first, so that the workers do not wait on one long test at the end. Whole
    # modules move (a stable sort), so that no module fixture is built twice on a worker.
    slow_modules = {item.nodeid.split("::")[0] for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_modules)
