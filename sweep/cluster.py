"""Connecting to Ray: join a running cluster, or start a local instance bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os

from models.errors import UserError

log = logging.getLogger(__name__)


def connect(cluster: str, temp_dir: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray and say what was done.

    ``auto`` joins the cluster named by RAY_ADDRESS or started with ``ray start`` on this
    machine, and otherwise starts a local instance; ``local`` always starts a fresh local
    instance; anything else is an address that must answer.
    """
    import ray

    if ray.is_initialized():
        return "using the Ray instance already initialised in this process"
    if cluster == "local":
        _start_local(temp_dir, num_cpus)
        return f"started a local Ray instance on 127.0.0.1 ({_cpus()} CPUs, {_gpus()} GPUs)"
    if cluster == "auto":
        try:
            ray.init(address="auto", logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError):
            _start_local(temp_dir, num_cpus)
            return (f"no running Ray cluster found (RAY_ADDRESS={os.environ.get('RAY_ADDRESS', 'unset')}); "
                    f"started a local one on 127.0.0.1 ({_cpus()} CPUs, {_gpus()} GPUs)")
        return f"joined the running Ray cluster ({_cpus()} CPUs, {_gpus()} GPUs, {_nodes()} nodes)"
    try:
        ray.init(address=cluster, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # Ray raises several types for an address that does not answer
        raise UserError(
            f"--cluster {cluster}: no Ray cluster answers at this address ({type(exc).__name__}: "
            f"{str(exc)[:200]}); check the address (host:port of the head's GCS, e.g. 10.0.0.5:6379 "
            f"or ray://host:10001), or use --cluster local"
        ) from None
    return f"joined the Ray cluster at {cluster} ({_cpus()} CPUs, {_gpus()} GPUs, {_nodes()} nodes)"


def _start_local(temp_dir: str | None, num_cpus: int | None) -> None:
    import ray

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",  # never listen beyond this machine unless asked to
        include_dashboard=False,
        num_cpus=num_cpus,
        _temp_dir=temp_dir,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def _cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


def _gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


def _nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
