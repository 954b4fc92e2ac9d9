r"""Multi-host runs: which process this is, and ``jax.distributed.initialize``.

The same ``bptt-jax train`` command runs on every host of a GPU/TPU cluster;
each process is told the coordinator's address, how many processes there are
and its own id, by flags or by environment variables (flags win):

====================  ==========================  =====================================
flag                  environment variable        meaning
====================  ==========================  =====================================
``--coordinator``     ``BPTT_JAX_COORDINATOR``    ``HOST:PORT`` of process 0
``--num-processes``   ``BPTT_JAX_NUM_PROCESSES``  ``P``, the number of processes
``--process-id``      ``BPTT_JAX_PROCESS_ID``     ``p`` in ``0 .. P - 1``
====================  ==========================  =====================================

With none of them set (or ``P = 1``) the run is a single process and
``jax.distributed.initialize`` is not called. With ``P > 1`` all three are
required, and :func:`initialize` calls ``jax.distributed.initialize`` before
anything else touches the devices; ``jax.devices()`` then lists the devices of
every process, the mesh spans them all, and process ``p`` reads the streams
``p, p + P, ...`` (:func:`bptt_jax.app.io.streams.process_streams`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax

ENV_COORDINATOR = "BPTT_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "BPTT_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "BPTT_JAX_PROCESS_ID"


class ClusterError(ValueError):
    """Inconsistent multi-host settings (reported as a message, no traceback)."""


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in a (possibly single-process) run."""

    coordinator: str | None = None  # "HOST:PORT" of process 0; None for one process
    num_processes: int = 1  # P
    process_id: int = 0  # p

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ClusterError(f"{name} must be an integer, got {value!r}") from None


def cluster_from(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Cluster:
    """The cluster settings from the flags, falling back to the environment.

    Args:
      coordinator, num_processes, process_id: the command-line values, None
        when not given.
      env: the environment (``os.environ`` by default).

    Raises:
      ClusterError: a count below 1, an id outside ``0 .. P - 1``, a
        non-integer environment value, or ``P > 1`` without a coordinator
        address or a process id.
    """
    env = os.environ if env is None else env
    if coordinator is None:
        coordinator = env.get(ENV_COORDINATOR) or None
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = _int(env[ENV_NUM_PROCESSES], ENV_NUM_PROCESSES)
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = _int(env[ENV_PROCESS_ID], ENV_PROCESS_ID)

    if num_processes is None:
        if coordinator is not None or process_id not in (None, 0):
            raise ClusterError(
                "--coordinator and --process-id need --num-processes "
                f"(or {ENV_NUM_PROCESSES}) as well"
            )
        return Cluster()
    if num_processes < 1:
        raise ClusterError(f"--num-processes must be >= 1, got {num_processes}")
    if num_processes == 1:
        if process_id not in (None, 0):
            raise ClusterError(f"--process-id {process_id} is outside 0..0 for 1 process")
        return Cluster()
    if coordinator is None:
        raise ClusterError(
            f"--num-processes {num_processes} needs --coordinator HOST:PORT "
            f"(or {ENV_COORDINATOR}): the address of process 0"
        )
    if process_id is None:
        raise ClusterError(
            f"--num-processes {num_processes} needs --process-id (or {ENV_PROCESS_ID}): "
            f"this process's id in 0..{num_processes - 1}"
        )
    if not 0 <= process_id < num_processes:
        raise ClusterError(
            f"--process-id {process_id} is outside 0..{num_processes - 1} "
            f"for {num_processes} processes"
        )
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    return Cluster(coordinator, num_processes, process_id)


def initialize(cluster: Cluster, initialize_fn: Callable | None = None) -> bool:
    """Calls ``jax.distributed.initialize`` for a multi-process run; returns whether it did.

    A single-process run (``P = 1``) skips it: nothing to connect to.

    Args:
      cluster: from :func:`cluster_from`.
      initialize_fn: the function to call (``jax.distributed.initialize`` by
        default; tests pass a recorder).
    """
    if not cluster.multi_process:
        return False
    if initialize_fn is None:
        initialize_fn = jax.distributed.initialize
    initialize_fn(
        coordinator_address=cluster.coordinator,
        num_processes=cluster.num_processes,
        process_id=cluster.process_id,
    )
    return True
