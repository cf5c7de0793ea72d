"""`sweep --dry-run --compile` compiles each run's train step for the mesh's TPU topology, deviceless (libtpu).

One run of a one-layer `tiny` on the v5e-8 mesh (fsdp 2 × expert 4): its train step (what is checked is
the dry run's report, not the model, so one layer compiles for it as four would, in a quarter of the
time; tests/test_plan_compile.py compiles `small`'s whole train step, scanned). Its `serve.max_sessions` of 4 does
not divide the 8 chips: a sweep trains, so that is not its concern, and the compile of the train step
alone is not refused over it.
"""

from __future__ import annotations

import io
import textwrap

import pytest

from interaction_jax import sweep
from tests.test_plan_compile import _need_libtpu

pytestmark = [pytest.mark.compile, pytest.mark.slow]  # tiny's whole train step, compiled deviceless


def test_a_dry_run_prints_each_runs_compiled_memory_and_step_time(tmp_path):
    _need_libtpu()
    path = tmp_path / "one.py"
    path.write_text(
        textwrap.dedent(
            """
            MESH = "mesh_configs/tpu-v5e-8.yaml"

            def runs():
                yield {"train.steps": 10, "model.n_layers": 1}
            """
        )
    )
    out = io.StringIO()
    (result,) = sweep.run_sweep_command(str(path), dry_run=True, compile_step=True, out=out)
    assert result.status == "planned" and result.error is None
    lines = out.getvalue().splitlines()
    start = lines.index("# run 1/1: steps=10,n_layers=1")
    compiled, command = lines[start + 1 : -1], lines[-1]
    assert compiled[0].startswith("# deviceless TPU compile: mesh tpu-v5e-8, topology v5e:2x4, 8 TPU v5e chips")
    labels = [line[2:].split("  ")[0] for line in compiled[2:-1]]  # the rows, between heading and note
    assert labels[:2] == ["compile time", "HBM arguments"] and "HBM total (of 16 GiB)" in labels
    assert labels[-2:] == ["est. time (roofline)", "est. MFU"]
    assert compiled[-1].startswith("# ESTIMATES, not measurements")  # said to be an estimate
    assert not any(line.startswith(("# all-gather", "# FLOPs")) for line in compiled)  # memory and time only
    assert command.startswith("interaction-jax train --preset tiny --mesh mesh_configs/tpu-v5e-8.yaml ")
