"""Multi-host start-up through JAX's own multi-controller runtime (`jax.distributed`), nothing home-made.

Every host runs the same command. Where the cluster tells JAX who is who (Cloud TPU pods, Slurm,
Open MPI) `--distributed` is enough; elsewhere (a GPU cluster, or processes on one machine) pass the
coordinator's address, the process count and this process's id, as flags or as the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. On CPU the cross-process
collectives go through gloo.
"""

from __future__ import annotations

import os

import jax


def initialize(
    enable: bool = False,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join the distributed run when asked to (flags or environment); return whether one was joined.

    Must run before anything touches a JAX backend.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not (enable or coordinator_address):
        return False
    if coordinator_address and (num_processes is None or process_id is None):
        raise ValueError(
            "a coordinator address needs the process count and this process's id too "
            "(--num-processes and --process-id, or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    # Only the CPU backend reads this; without it CPU arrays cannot be reduced across processes.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
