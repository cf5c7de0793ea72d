"""Sweeps: the experiment files, the local runner (with a fake trainer), summaries and pod dry runs."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interaction_jax import config as config_lib
from interaction_jax import stream, sweep
from interaction_jax.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
MESHES = sorted((ROOT / "mesh_configs").glob("*.yaml"))
TINY = config_lib.preset("tiny")


@dataclasses.dataclass(frozen=True)
class FakeResult:
    """Stands in for train.loop.TrainResult."""

    step: int
    loss: float
    heldout_loss: float | None
    tokens_per_s: float
    seconds: float
    workdir: str
    preempted: bool = False


class FakeTrain:
    """Records every (cfg, workdir) it is called with; fails or is preempted on the runs it is told."""

    def __init__(self, fail: dict[int, Exception] | None = None, preempt: set[int] = frozenset()):
        self.calls: list[tuple[config_lib.Config, str]] = []
        self.fail = fail or {}
        self.preempt = preempt

    def __call__(self, cfg, workdir):
        i = len(self.calls)
        self.calls.append((cfg, workdir))
        if i in self.fail:
            raise self.fail[i]
        steps = 150 if i in self.preempt else cfg.train.steps
        return FakeResult(steps, 1.0 + i / 8, 2.0 + i / 8, 1234.5 * (i + 1), 61.0 + i, workdir, i in self.preempt)


def never_train(cfg, workdir):
    raise AssertionError(f"a dry run must not train ({workdir})")


def write_sweep(tmp_path: Path, body: str, name: str = "mini") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def run(path, tmp_path, **kwargs):
    out = io.StringIO()
    kwargs.setdefault("workdir_root", str(tmp_path / "runs"))
    kwargs.setdefault("num_devices", 1)
    results = sweep.run_sweep_command(str(path), out=out, **kwargs)
    return results, out.getvalue()


# ----------------------------------------------------------------------------------------------
# The experiment files


@pytest.mark.parametrize(
    ("file", "names", "values"),
    [
        ("chunk_size.py", ["chunk_ms=100", "chunk_ms=200", "chunk_ms=400"], lambda c: c.stream.chunk_ms),
        ("experts.py", ["n_experts=4", "n_experts=8", "n_experts=16"], lambda c: c.model.n_experts),
        ("top_k.py", ["top_k=1", "top_k=2"], lambda c: c.model.top_k),
    ],
)
def test_experiments_sweep_what_their_docstrings_promise_and_validate(file, names, values):
    s = sweep.load_sweep(EXPERIMENTS / file)
    planned = sweep.plan_runs(s, num_devices=1)
    assert s.preset == "tiny" and s.base["train.steps"] == 300
    assert [p.name for p in planned] == names
    assert [values(p.cfg) for p in planned] == [int(n.split("=")[1]) for n in names]
    for p in planned:
        assert config_lib.validate(p.cfg, 1) is p.cfg and p.cfg.train.steps == 300
    docstring = (EXPERIMENTS / file).read_text().split('"""')[1]
    assert all(n.split("=")[1] in docstring for n in names)  # the docstring names every swept value


def test_chunk_size_changes_only_the_chunk_length():
    planned = sweep.plan_runs(sweep.load_sweep(EXPERIMENTS / "chunk_size.py"), num_devices=1)
    seconds, window_tokens = set(), set()
    for p in planned:
        s, chunk = p.cfg.stream, p.cfg.stream.chunk_ms
        seconds.add(
            (
                p.cfg.data.episode_chunks * chunk,  # episode ms
                p.cfg.train.window_chunks * chunk,  # window ms
                s.video_every * chunk,  # ms between frames
                s.text_in_slots * 1000 // chunk,  # text tokens per second, each way
                s.text_out_slots * 1000 // chunk,
                s.audio_slots * 1000 // chunk,  # audio tokens per second
            )
        )
        window_tokens.add(stream.window_length(s, p.cfg.train.window_chunks))
        assert p.cfg.data.episode_chunks * chunk >= 9000  # every scenario's min_seconds (9 s)
        # Nothing else moves: the model, mesh, serving and data mix are the preset's.
        assert (p.cfg.model, p.cfg.mesh, p.cfg.serve) == (TINY.model, TINY.mesh, TINY.serve)
        assert dataclasses.replace(p.cfg.train, steps=TINY.train.steps, window_chunks=10) == TINY.train
        assert dataclasses.replace(p.cfg.data, episode_chunks=50) == TINY.data
    assert seconds == {(10_000, 2_000, 400, 20, 20, 20)}
    assert window_tokens == {180}
    assert [p.cfg.stream.video_every for p in planned] == [4, 2, 1]
    assert [p.cfg.stream.text_out_slots for p in planned] == [2, 4, 8]


def test_experts_fit_the_meshes_they_name_and_keep_the_active_size():
    """The sweep names the meshes its expert counts fit (cpu-8, tpu-v5e-16, tpu-v5p-128); on a mesh too big
    for `tiny` (the 512-chip pods) it is refused before any run starts, naming what does not divide."""
    s = sweep.load_sweep(EXPERIMENTS / "experts.py")
    fitting = {"cpu-8.yaml", "tpu-v5e-16.yaml", "tpu-v5p-128.yaml"}
    assert fitting <= {p.name for p in MESHES}
    for path in MESHES:
        mesh = config_lib.load_mesh(path)
        devices, _ = config_lib.mesh_device_count(mesh)
        expert_axis = config_lib.resolve_axis_sizes(mesh, devices)["expert"]
        fits = all(overrides["model.n_experts"] % expert_axis == 0 for overrides in s.runs)
        assert fits or path.name not in fitting, path.name
        if not fits:
            with pytest.raises(sweep.SweepError, match=r"run 'n_experts=4' \(1 of 3\)"):
                sweep.plan_runs(s, mesh=str(path))
    planned = sweep.plan_runs(s, mesh=str(ROOT / "mesh_configs/cpu-8.yaml"))  # expert axis 2, 8 devices
    assert [p.cfg.mesh.name for p in planned] == ["cpu-8"] * 3
    assert {(p.cfg.model.top_k, p.cfg.model.expert_mlp) for p in planned} == {(2, TINY.model.expert_mlp)}


def test_top_k_routes_by_the_router_probability_in_both_runs():
    planned = sweep.plan_runs(sweep.load_sweep(EXPERIMENTS / "top_k.py"), num_devices=1)
    assert [(p.cfg.model.top_k, p.cfg.model.normalize_topk) for p in planned] == [(1, False), (2, False)]
    assert all(p.cfg.model.top_k <= p.cfg.model.n_experts == 4 for p in planned)


# ----------------------------------------------------------------------------------------------
# Running locally


def test_runs_train_in_their_own_workdirs_with_the_set_extras(tmp_path):
    train = FakeTrain()
    sets = ["train.learning_rate=0.01", "model.d_model=64"]
    results, out = run(EXPERIMENTS / "top_k.py", tmp_path, sets=sets, train_fn=train)
    root = tmp_path / "runs" / "top_k"
    assert [w for _, w in train.calls] == [f"{root}/top_k=1", f"{root}/top_k=2"]
    assert [c.model.top_k for c, _ in train.calls] == [1, 2]
    for cfg, _ in train.calls:
        assert (cfg.train.learning_rate, cfg.model.d_model, cfg.train.steps) == (0.01, 64, 300)
        assert cfg.model.normalize_topk is False  # BASE
    assert [(r.name, r.status, r.workdir) for r in results] == [
        ("top_k=1", "done", f"{root}/top_k=1"),
        ("top_k=2", "done", f"{root}/top_k=2"),
    ]
    assert results[1].result.tokens_per_s == 2469.0
    assert f"[1/2] top_k: top_k=1 → {root}/top_k=1" in out


def test_the_table_lists_every_run_and_summary_json_records_them(tmp_path):
    train = FakeTrain()
    _, out = run(EXPERIMENTS / "chunk_size.py", tmp_path, train_fn=train)
    assert len(train.calls) == 3
    final = out[out.rindex("sweep chunk_size: 3 runs") :].splitlines()
    assert final[0] == "sweep chunk_size: 3 runs (3 done)"
    assert final[1].split() == ["run", "chunk_ms", "steps", "loss", "held-out", "tokens/s", "time", "status"]
    assert [line.split() for line in final[2:5]] == [
        ["chunk_ms=100", "100", "300", "1.0000", "2.0000", "1,234", "1m01s", "done"],
        ["chunk_ms=200", "200", "300", "1.1250", "2.1250", "2,469", "1m02s", "done"],
        ["chunk_ms=400", "400", "300", "1.2500", "2.2500", "3,704", "1m03s", "done"],
    ]
    assert out.count("so far") == 2  # the table after runs 1 and 2, then the final one
    summary_path = tmp_path / "runs" / "chunk_size" / "summary.json"
    assert f"summary: {summary_path}" in out
    summary = json.loads(summary_path.read_text())
    assert (summary["sweep"], summary["preset"], summary["mesh"]) == ("chunk_size", "tiny", None)
    assert summary["swept"] == ["stream.chunk_ms"] and summary["base"] == {"train.steps": 300}
    first = summary["runs"][0]
    assert first["name"] == "chunk_ms=100" and first["status"] == "done" and first["error"] is None
    assert first["workdir"] == str(tmp_path / "runs" / "chunk_size" / "chunk_ms=100")
    assert first["overrides"]["stream.chunk_ms"] == 100 and first["overrides"]["data.episode_chunks"] == 100
    assert first["set"][:2] == ["train.steps=300", "stream.chunk_ms=100"]
    assert (first["step"], first["loss"], first["heldout_loss"], first["seconds"]) == (300, 1.0, 2.0, 61.0)
    assert [r["tokens_per_s"] for r in summary["runs"]] == [1234.5, 2469.0, 3703.5]


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
    train = FakeTrain(fail={1: RuntimeError("out of memory at step 12")})
    results, out = run(EXPERIMENTS / "experts.py", tmp_path, train_fn=train)
    assert [c.model.n_experts for c, _ in train.calls] == [4, 8, 16]  # the third run still trained
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert results[1].error == "RuntimeError: out of memory at step 12" and results[1].result is None
    final = out[out.rindex("sweep experts: 3 runs") :].splitlines()
    assert final[0] == "sweep experts: 3 runs (2 done, 1 failed)"
    failed = final[3]
    assert failed.split()[:7] == ["n_experts=8", "8", "—", "—", "—", "—", "—"]
    assert failed.endswith("failed: RuntimeError: out of memory at step 12")
    assert "out of memory at step 12" in capsys.readouterr().err  # the traceback, for debugging
    summary = json.loads((tmp_path / "runs" / "experts" / "summary.json").read_text())
    assert [(r["status"], r["error"], r["loss"]) for r in summary["runs"]] == [
        ("done", None, 1.0),
        ("failed", "RuntimeError: out of memory at step 12", None),
        ("done", None, 1.25),
    ]


def test_a_preempted_run_stops_the_sweep_and_leaves_the_rest_pending(tmp_path):
    train = FakeTrain(preempt={1})
    results, out = run(EXPERIMENTS / "chunk_size.py", tmp_path, train_fn=train)
    assert len(train.calls) == 2
    assert [r.status for r in results] == ["done", "preempted", "pending"]
    assert "run chunk_ms=200 was preempted at step 150; run the same command again to continue" in out
    summary = json.loads((tmp_path / "runs" / "chunk_size" / "summary.json").read_text())
    assert [(r["status"], r["step"]) for r in summary["runs"]] == [("done", 300), ("preempted", 150), ("pending", None)]


def test_a_finished_run_resumed_shows_no_throughput_and_a_diverged_loss_shows_nan(tmp_path):
    def train(cfg, workdir):
        diverged = cfg.model.top_k == 2
        return FakeResult(300, float("nan") if diverged else 1.5, None, float("nan"), 2.0 if diverged else 4e3, workdir)

    _, out = run(EXPERIMENTS / "top_k.py", tmp_path, train_fn=train)
    final = out[out.rindex("sweep top_k: 2 runs") :].splitlines()
    assert [line.split() for line in final[2:4]] == [
        ["top_k=1", "1", "300", "1.5000", "—", "—", "1h06m", "done"],
        ["top_k=2", "2", "300", "nan", "—", "—", "2.0s", "done"],
    ]
    summary = json.loads((tmp_path / "runs" / "top_k" / "summary.json").read_text())
    assert [(r["loss"], r["heldout_loss"], r["tokens_per_s"]) for r in summary["runs"]] == [
        (1.5, None, "nan"),
        ("nan", None, "nan"),
    ]


def test_the_default_trainer_is_train_loop_train_with_the_progress_flag():
    from interaction_jax.train import loop

    quiet = sweep.default_train_fn(progress=False)
    assert quiet.func is loop.train and quiet.keywords == {"progress": False}


def test_override_values_of_every_type_reach_the_config(tmp_path):
    path = write_sweep(
        tmp_path,
        """
        BASE = {"train.learning_rate": 1e-4, "data.scenarios": ("turn_taking", "backchannel"),
                "data.weights": [2.0, 1.0]}
        SWEPT = ("model.moe_dispatch",)

        def runs():
            yield {"model.moe_dispatch": "gather", "stream.video": False}
            yield {"model.moe_dispatch": "dense", "stream.video": True}
        """,
    )
    train = FakeTrain()
    results, _ = run(path, tmp_path, train_fn=train)
    assert [r.name for r in results] == ["moe_dispatch=gather", "moe_dispatch=dense"]
    (a, _), (b, _) = train.calls
    assert (a.model.moe_dispatch, a.stream.video, b.model.moe_dispatch, b.stream.video) == (
        "gather",
        False,
        "dense",
        True,
    )
    assert a.train.learning_rate == 1e-4 and a.data.scenarios == ("turn_taking", "backchannel")
    assert a.data.weights == (2.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Bad sweeps fail before anything runs


def test_an_unknown_key_fails_before_the_first_run_naming_the_run(tmp_path):
    path = write_sweep(
        tmp_path,
        """
        def runs():
            yield {"model.n_experts": 4}
            yield {"model.n_expert": 8}
        """,
    )
    train = FakeTrain()
    with pytest.raises(ConfigError) as info:
        run(path, tmp_path, train_fn=train)
    message = str(info.value)
    assert "sweep mini, run 'n_expert=8' (2 of 2)" in message
    assert "model.n_expert: unknown key" in message and "did you mean model.n_experts?" in message
    assert train.calls == [] and not (tmp_path / "runs").exists()


def test_an_invalid_run_config_fails_before_the_first_run(tmp_path):
    path = write_sweep(
        tmp_path,
        """
        def runs():
            for k in (2, 8):
                yield {"model.top_k": k}
        """,
    )
    train = FakeTrain()
    with pytest.raises(ConfigError, match=r"run 'top_k=8' \(2 of 2\): model.top_k: top_k 8 exceeds n_experts 4"):
        run(path, tmp_path, train_fn=train)
    assert train.calls == []


def test_mesh_checks_use_the_mesh_of_the_sweep(tmp_path):
    path = write_sweep(
        tmp_path,
        f"""
        MESH = {str(ROOT / "mesh_configs/cpu-8.yaml")!r}

        def runs():
            for n in (4, 3):
                yield {{"model.n_experts": n}}
        """,
    )
    with pytest.raises(ConfigError, match=r"run 'n_experts=3'.*model.n_experts: 3 is not divisible by the 2 devices"):
        run(path, tmp_path, train_fn=FakeTrain(), num_devices=None)


def test_a_training_sweep_is_not_refused_over_keys_only_the_server_reads(tmp_path):
    """serve.max_sessions 4 does not divide the 16 chips of a v5e-16 and the port is no TCP port, but a sweep
    trains: its runs plan; the same config validated for serving (the control) is refused for both."""
    mesh = str(ROOT / "mesh_configs/tpu-v5e-16.yaml")
    sets = ["train.batch_size=32", "serve.port=70000"]
    results, _ = run(EXPERIMENTS / "top_k.py", tmp_path, mesh=mesh, sets=sets, dry_run=True, num_devices=None)
    assert [r.status for r in results] == ["planned", "planned"]
    cfg = sweep.plan_runs(sweep.load_sweep(EXPERIMENTS / "top_k.py"), mesh=mesh, sets=sets)[0].cfg
    assert cfg.serve.max_sessions == 4 and cfg.serve.port == 70000
    with pytest.raises(ConfigError, match=r"serve\.port: 70000 is not a TCP port"):
        config_lib.validate(cfg, 16, purpose="serve")
    with pytest.raises(ConfigError, match=r"serve\.max_sessions: 4 is not divisible by the 16 devices"):
        config_lib.validate(dataclasses.replace(cfg, serve=TINY.serve), 16, purpose="serve")
    # the sampling keys the training run's behaviour probe reads are still checked
    with pytest.raises(ConfigError, match=r"run 'top_k=1' \(1 of 2\): serve.speak_threshold"):
        run(EXPERIMENTS / "top_k.py", tmp_path, sets=["serve.speak_threshold=1.5"], dry_run=True)


@pytest.mark.parametrize(
    ("body", "sets", "words"),
    [
        ("def runs():\n    yield {}\n    yield {}\n", [], "same name as run 1"),
        (
            "BASE = {'train.stepz': 3}\ndef runs():\n    yield {'model.top_k': 1}\n",
            [],
            "BASE: train.stepz: unknown key",
        ),
        ("def runs():\n    yield {'model.top_k': 1}\n", ["model.top_k=2"], "model.top_k is set by the runs"),
        ("def runs():\n    yield {'model.top_k': 1}\n", ["trian.steps=2"], "--set: trian: unknown key"),
        ("def runs():\n    return []\n", [], "yielded no runs"),
        ("def runs():\n    yield ['model.top_k', 1]\n", [], "run 1: expected a dict of overrides"),
        ("PRESET = 'huge'\ndef runs():\n    yield {'model.top_k': 1}\n", [], "preset: unknown preset 'huge'"),
        ("RUNS = []\n", [], "defines no runs()"),
        ("def runs():\n    yield {'model.top_k': 1/0}\n", [], "runs(): ZeroDivisionError"),
    ],
)
def test_bad_sweep_files_and_flags_are_named(tmp_path, body, sets, words):
    path = write_sweep(tmp_path, body)
    train = FakeTrain()
    with pytest.raises(ConfigError) as info:
        run(path, tmp_path, sets=sets, train_fn=train)
    assert words in str(info.value)
    assert train.calls == []


# ----------------------------------------------------------------------------------------------
# Dry runs


def parse_pod_command(command: str) -> tuple[str, str, int, list[str]]:
    """(node, zone, worker, the remote `interaction-jax train` argv) of one printed command."""
    argv = shlex.split(command)
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and argv[-1] == "&"
    zone = argv[argv.index("--zone") + 1] if "--zone" in argv else ""
    worker = int(next(a for a in argv if a.startswith("--worker=")).split("=")[1])
    remote = shlex.split(argv[argv.index("--command") + 1])
    assert remote[:3] == ["cd", "interaction-jax", "&&"]
    return argv[5], zone, worker, remote[3:]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_pod_dry_run_prints_one_command_per_host_per_run(tmp_path):
    mesh = "mesh_configs/tpu-v5e-16.yaml"
    results, out = run(
        EXPERIMENTS / "experts.py",
        tmp_path,
        preset="base",
        mesh=str(ROOT / mesh),
        sets=["train.batch_size=64", "data.seed=3"],
        workdir_root="gs://bucket/sweeps",
        dry_run=True,
        pod="my-pod",
        zone="us-central1-a",
        num_devices=None,
        train_fn=never_train,
    )
    commands = [line for line in out.splitlines() if line.startswith("gcloud ")]
    assert len(commands) == 3 * 4  # 3 runs × (16 chips / 4 chips per host)
    # A shell script: per run, its hosts start in the background, then `wait` before the next run.
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert [line.split()[0] for line in lines] == (["gcloud"] * 4 + ["wait"]) * 3
    assert "16 chips, 4 hosts" in out and "note:" not in out  # gs:// workdir: no warning
    parsed = [parse_pod_command(c) for c in commands]
    assert [(node, zone, worker) for node, zone, worker, _ in parsed] == [
        ("my-pod", "us-central1-a", w) for _ in range(3) for w in range(4)
    ]
    for i, n in enumerate((4, 8, 16)):
        remotes = [argv for _, _, _, argv in parsed[4 * i : 4 * i + 4]]
        assert all(argv == remotes[0] for argv in remotes)  # every host runs the same command
        argv = remotes[0]
        assert argv[:3] == ["interaction-jax", "train", "--distributed"]  # all hosts join one run
        assert flag_values(argv, "--preset") == ["base"]
        assert flag_values(argv, "--mesh") == [mesh]  # relative to the repository root on the hosts
        assert flag_values(argv, "--workdir") == [f"gs://bucket/sweeps/experts/n_experts={n}"]
        sets = flag_values(argv, "--set")
        assert sets == ["train.steps=300", f"model.n_experts={n}", "train.batch_size=64", "data.seed=3"]
        # The hosts build exactly the config the sweep validated.
        remote_cfg = config_lib.override(
            dataclasses.replace(config_lib.preset("base"), mesh=config_lib.load_mesh(ROOT / mesh)), sets
        )
        planned = results[i]
        assert planned.status == "planned" and planned.commands == [
            c.removesuffix(" &") for c in commands[4 * i : 4 * i + 4]
        ]
        assert remote_cfg.model.n_experts == n and remote_cfg.train.batch_size == 64
        assert config_lib.validate(remote_cfg, 16) is remote_cfg


def test_multislice_pods_address_each_slice_by_node_prefix(tmp_path):
    results, out = run(
        EXPERIMENTS / "top_k.py",
        tmp_path,
        preset="tml-small-shape",
        mesh=str(ROOT / "mesh_configs/tpu-v5p-128.yaml"),
        sets=["train.batch_size=256"],
        dry_run=True,
        pod="big",
        num_devices=None,
        train_fn=never_train,
    )
    parsed = [parse_pod_command(line) for line in out.splitlines() if line.startswith("gcloud ")]
    hosts = [(node, worker) for node, _, worker, _ in parsed]
    # 2 slices (dcn fsdp 2) × 64 chips / 4 per host, for each of the 2 runs.
    assert hosts == [(f"big-{s}", w) for s in range(2) for w in range(16)] * 2
    assert all(zone == "" for _, zone, _, _ in parsed)  # no --zone flag: gcloud's default zone
    assert "note: workdir" in out  # a local workdir on a pod gets a warning
    assert [len(r.commands) for r in results] == [32, 32]


def test_pod_host_count_needs_hosts_for_a_minus_one_mesh(tmp_path):
    mesh = tmp_path / "tpu-any.yaml"
    # the batch axes replicated: the host count is the point here, not the batch sizes' divisibility
    mesh.write_text(
        "name: tpu-any\ndevice_kind: tpu\naxes: {data: -1, fsdp: 1, seq: 1, tensor: 1, expert: 1}\n"
        "rules: {act_batch: [], cache_batch: []}\n"
    )
    common = dict(mesh=str(mesh), dry_run=True, pod="p", num_devices=None, train_fn=never_train)
    with pytest.raises(ConfigError, match="pass --hosts N"):
        run(EXPERIMENTS / "top_k.py", tmp_path, **common)
    _, out = run(EXPERIMENTS / "top_k.py", tmp_path, hosts=2, **common)
    parsed = [parse_pod_command(line) for line in out.splitlines() if line.startswith("gcloud ")]
    assert [(node, worker) for node, _, worker, _ in parsed] == [("p", 0), ("p", 1)] * 2
    assert "8 chips, 2 hosts" in out


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(dry_run=True, pod="p"), "mesh cpu-1 is for device_kind cpu"),  # the tiny preset's mesh
        (dict(pod="p", mesh="mesh_configs/tpu-v5e-16.yaml"), "add --dry-run"),
        (dict(zone="us-central1-a"), "--zone: only applies to a TPU pod"),
    ],
)
def test_pod_flag_mistakes_are_named(tmp_path, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        run(EXPERIMENTS / "top_k.py", tmp_path, train_fn=never_train, **kwargs)


def test_local_dry_run_prints_the_train_commands(tmp_path):
    results, out = run(
        EXPERIMENTS / "top_k.py", tmp_path, dry_run=True, sets=["model.d_model=64"], train_fn=never_train
    )
    commands = [line for line in out.splitlines() if line.startswith("interaction-jax ")]
    root = tmp_path / "runs" / "top_k"
    assert [shlex.split(c) for c in commands] == [
        [
            *("interaction-jax", "train", "--preset", "tiny", "--workdir", f"{root}/top_k={k}"),
            *("--set", "train.steps=300", "--set", "model.normalize_topk=false"),
            *("--set", f"model.top_k={k}", "--set", "model.d_model=64"),
        ]
        for k in (1, 2)
    ]
    assert [r.status for r in results] == ["planned", "planned"] and not root.exists()


def test_the_trainer_is_imported_only_when_a_run_starts():
    code = (
        "import sys, io; from interaction_jax import sweep; "
        "sweep.run_sweep_command('experiments/top_k.py', dry_run=True, out=io.StringIO()); "
        "print(sorted(m for m in sys.modules if m.startswith('interaction_jax.train')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# Dry runs with --compile (the compile itself: tests/test_sweep_compile.py, with libtpu)


def test_compile_needs_a_dry_run(tmp_path):
    with pytest.raises(ConfigError, match="--compile: compiles each run's train step in place of training it"):
        run(EXPERIMENTS / "top_k.py", tmp_path, compile_step=True, train_fn=never_train)


def test_compile_without_libtpu_says_how_to_install_it_before_printing(monkeypatch, capsys):
    from interaction_jax import aot, cli

    monkeypatch.setattr(aot, "libtpu_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", "experiments/top_k.py", "--dry-run", "--compile"])
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("sweep --compile: ") and 'pip install -e ".[tpu-compile]"' in captured.err
    assert captured.out == ""  # refused before any of the script is printed


def test_a_run_that_does_not_fit_is_held_back_and_the_command_fails(tmp_path, monkeypatch, capsys):
    from interaction_jax import cli
    from interaction_jax.sweep import deviceless

    def fake_compile(planned):  # stands in for aot.compile_plan: top-2 does not fit
        if planned.cfg.model.top_k == 2:
            return deviceless.RunCompile(("train step does not fit", "biggest buffers: x"), "train step does not fit")
        return deviceless.RunCompile(("HBM total (of 16 GiB)  1.00 GiB (6%)",))

    monkeypatch.setattr(deviceless, "require_libtpu", lambda: None)
    monkeypatch.setattr(deviceless, "compile_run", fake_compile)
    results, out = run(EXPERIMENTS / "top_k.py", tmp_path, dry_run=True, compile_step=True, train_fn=never_train)
    assert [(r.status, r.error) for r in results] == [("planned", None), ("failed", "train step does not fit")]
    first, second = out.split("\n# run 2/2: top_k=2\n")
    assert "# HBM total (of 16 GiB)  1.00 GiB (6%)\ninteraction-jax train " in first  # the lines, then the command
    assert second.startswith("# train step does not fit\n# biggest buffers: x\n# does not fit: not launched\n")
    assert not [line for line in second.splitlines() if not line.startswith("#")]  # nothing of it runs
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", "experiments/top_k.py", "--dry-run", "--compile", "--num-devices", "1"])
    assert exit_.value.code == 1
    assert "sweep --compile: run top_k=2: train step does not fit" in capsys.readouterr().err
