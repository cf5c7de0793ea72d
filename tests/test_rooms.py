"""Each room knows only the rooms below it: importing one loads nothing of the rooms above or beside it.

Checked in a fresh interpreter, so what the test session has already imported cannot hide a leak.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

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


def import_graph(packages: tuple[str, ...] = ("interaction_jax", "pallas_kernels")) -> dict[str, set[str]]:
    """module → the project's modules it imports, anywhere in its file (function-level imports too), read
    from the source; `from a import b` counts as importing `a.b` where that is a module, else `a`."""
    root = Path(__file__).resolve().parents[1]
    files = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def project_module(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {project_module(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets |= {project_module(f"{base}.{a.name}") for a in node.names}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports in `graph` (a list of modules, the first repeated at the end), or None."""
    done, path = set(), []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if circle := visit(target):
                return circle
        path.pop()
        done.add(module)
        return None

    return next((c for m in sorted(graph) if (c := visit(m))), None)


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert len(graph) > 100 and "interaction_jax.model.step" in graph["interaction_jax.serve.engine"]
    assert import_circle(graph) is None, " → ".join(import_circle(graph))
    # the control: one edge back from a room below closes a circle, and it is found
    leaky = {**graph, "interaction_jax.stream": graph["interaction_jax.stream"] | {"interaction_jax.serve.engine"}}
    circle = import_circle(leaky)
    assert circle and circle[0] == circle[-1] and "interaction_jax.serve.engine" in circle
