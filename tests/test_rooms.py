"""Each room knows only the rooms below it: importing one loads nothing of the rooms above or beside it.

Checked in a fresh interpreter, so what the test session has already imported cannot hide a leak.
"""

import os
import subprocess
import sys

import pytest

ROOMS = {
    # room: (the modules to import, the packages that must stay unloaded)
    "config": (["interaction_jax.config"], ["interaction_jax.data", "interaction_jax.model", "interaction_jax.train"]),
    # data/ (the scenarios and their metrics included) is below eval/: evaluation reads the registry, never back
    "data": (
        ["interaction_jax.data.pipeline", "interaction_jax.data.preview"],
        ["interaction_jax.eval", "interaction_jax.train", "interaction_jax.serve", "interaction_jax.model"],
    ),
    "model": (
        ["interaction_jax.model.step"],
        ["interaction_jax.train", "interaction_jax.serve", "interaction_jax.data"],
    ),
    "serve": (
        ["interaction_jax.serve.server", "interaction_jax.serve.client", "interaction_jax.serve.agents"],
        ["interaction_jax.data", "interaction_jax.eval", "grain"],
    ),
    "pallas_kernels": (["pallas_kernels.split_kv_attention", "pallas_kernels.moe"], ["interaction_jax"]),
}


def loaded_modules(imports: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in imports)
    if "interaction_jax.config" in imports:  # validation is where the config once reached into data
        code += "interaction_jax.config.validate(interaction_jax.config.preset('tiny'))\n"
    code += "print('\\n'.join(sys.modules))"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    )


def under(module: str, packages: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_a_room_loads_nothing_of_the_rooms_above_it(room):
    imports, forbidden = ROOMS[room]
    leaked = sorted(m for m in loaded_modules(imports) if under(m, forbidden))
    assert not leaked, f"importing {room} loads {leaked}"


def test_the_check_sees_a_leak():
    # the control: eval does load the scenario code (it must, to make held-out episodes)
    assert under("interaction_jax.data.scenarios", ["interaction_jax.data"])
    assert "interaction_jax.data.scenarios" in loaded_modules(["interaction_jax.eval"])
