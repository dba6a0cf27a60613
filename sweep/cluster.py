"""Connecting to Ray: join a running cluster, or start a local instance bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket

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
        _keep_loopback(os.environ.get("RAY_ADDRESS") or _address_of_running_cluster())
        try:
            ray.init(address="auto", logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError):
            _start_local(temp_dir, num_cpus)
            return (f"no running Ray cluster found (RAY_ADDRESS={os.environ.get('RAY_ADDRESS', 'unset')}); "
                    f"started a local one on 127.0.0.1 ({_cpus()} CPUs, {_gpus()} GPUs)")
        return f"joined the running Ray cluster ({_cpus()} CPUs, {_gpus()} GPUs, {_nodes()} nodes)"
    _keep_loopback(cluster)
    _check_reachable(cluster)
    try:
        ray.init(address=cluster, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # Ray raises several types for an address that does not answer
        raise UserError(
            f"--cluster {cluster}: no Ray cluster answers at this address ({type(exc).__name__}: "
            f"{str(exc)[:200]}); check the address (host:port of the head's GCS, e.g. 10.0.0.5:6379 "
            f"or ray://host:10001), or use --cluster local"
        ) from None
    return f"joined the Ray cluster at {cluster} ({_cpus()} CPUs, {_gpus()} GPUs, {_nodes()} nodes)"


def _keep_loopback(address: str | None) -> None:
    """Ray rewrites a loopback address to the machine's external IP before connecting, which
    cannot reach a cluster that listens on 127.0.0.1 only (the safe default). For a loopback
    address, keep it: Ray's switch for this is named after Windows/macOS but is generic."""
    host = (address or "").removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "::1") or host.startswith("127."):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for processes started later
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by Ray's address lookup


def _check_reachable(address: str) -> None:
    """Fail in a second, not after Ray's minutes of retries, when nothing listens there."""
    if address.startswith("ray://") or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            pass
    except (OSError, ValueError) as exc:
        raise UserError(
            f"--cluster {address}: nothing answers at this address ({exc}); check the address "
            f"(host:port of the head node's GCS, e.g. 10.0.0.5:6379, or ray://host:10001), "
            f"or use --cluster local"
        ) from None


def _address_of_running_cluster() -> str | None:
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address()
    except Exception:  # a private helper: if it moves, Ray's own lookup still runs
        return None


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
