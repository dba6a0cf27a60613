"""Connecting to Ray: join a running cluster, or start a local instance bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket

from results.errors import UserError

log = logging.getLogger(__name__)

# Storage settings every worker needs to reach the results store the driver names with --out
# (an S3-compatible endpoint, the region, GCP's project). Non-secret, so they are forwarded to
# the job's workers by default; credentials are forwarded only when named with --worker-env
# (on a cloud cluster the nodes' instance profile / service account supplies them).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_EC2_METADATA_DISABLED", "AWS_PROFILE", "GOOGLE_CLOUD_PROJECT",
                 "MLFLOW_S3_ENDPOINT_URL")

_CONNECTED: str | None = None  # what connect() did, said again if it is called twice


def connect(cluster: str, temp_dir: str | None = None, num_cpus: int | None = None,
            worker_env: list[str] | None = None) -> str:
    """Initialise Ray and say what was done.

    ``auto`` joins the cluster named by RAY_ADDRESS or started with ``ray start`` on this
    machine if something answers there within seconds, and otherwise starts a local instance,
    saying what pointed where; ``local`` always starts a fresh local instance; anything else is
    an address that must answer. The storage settings in
    FORWARDED_ENV (and the variables named in ``worker_env``) that are set in this process are
    passed to every worker of the job, so workers on other nodes reach the same store.
    """
    global _CONNECTED
    import ray

    if ray.is_initialized():
        return _CONNECTED or "using the Ray instance already initialised in this process"
    _CONNECTED = _connect(cluster, temp_dir, num_cpus, _runtime_env(worker_env))
    return _CONNECTED


def _runtime_env(worker_env: list[str] | None) -> dict | None:
    missing = [name for name in worker_env or [] if name not in os.environ]
    if missing:
        raise UserError(f"--worker-env {', '.join(missing)}: not set in this shell; export it first")
    names = [*FORWARDED_ENV, *(worker_env or [])]
    env_vars = {name: os.environ[name] for name in names if name in os.environ}
    return {"env_vars": env_vars} if env_vars else None


def _connect(cluster: str, temp_dir: str | None, num_cpus: int | None, runtime_env: dict | None) -> str:
    import ray

    if cluster == "local":
        _start_local(temp_dir, num_cpus, runtime_env)
        return f"started a local Ray instance on 127.0.0.1 ({_cpus()} CPUs, {_gpus()} GPUs)"
    if cluster == "auto":
        address, source = auto_address()
        if address is None:
            _start_local(temp_dir, num_cpus, runtime_env)
            return (f"no running Ray cluster found ({source}); started a local one on 127.0.0.1 "
                    f"({_cpus()} CPUs, {_gpus()} GPUs)")
        problem = probe(address)
        if problem:
            # Ray itself would retry this address for minutes ("Failed to connect to GCS" every
            # 30 s) before giving up: a stopped cluster's address file is no reason to wait.
            if source.startswith("RAY_ADDRESS"):
                del os.environ["RAY_ADDRESS"]  # so nothing started from here tries it again
            _start_local(temp_dir, num_cpus, runtime_env)
            return (f"{source} points at {address}, where nothing answers ({problem}); started a "
                    f"local Ray instance on 127.0.0.1 instead ({_cpus()} CPUs, {_gpus()} GPUs)")
        cluster = address
    else:
        problem = probe(cluster)
        if problem:
            raise UserError(
                f"--cluster {cluster}: nothing answers at this address ({problem}); check the "
                f"address (host:port of the head node's GCS, e.g. 10.0.0.5:6379, or "
                f"ray://host:10001), or use --cluster local"
            )
    _keep_loopback(cluster)
    try:
        ray.init(address=cluster, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env=runtime_env)
    except Exception as exc:  # Ray raises several types for an address that does not answer
        raise UserError(
            f"--cluster {cluster}: no Ray cluster answers at this address ({type(exc).__name__}: "
            f"{str(exc)[:200]}); check the address (host:port of the head's GCS, e.g. 10.0.0.5:6379 "
            f"or ray://host:10001), or use --cluster local"
        ) from None
    return f"joined the Ray cluster at {cluster} ({_cpus()} CPUs, {_gpus()} GPUs, {_nodes()} nodes)"


def auto_address() -> tuple[str | None, str]:
    """The address ``--cluster auto`` would join and what named it: RAY_ADDRESS, else the
    address file that ``ray start`` writes. Ray's own "auto" would also join any Ray instance
    it finds in the process list, e.g. another user's test instance: that is left out."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env, "RAY_ADDRESS (environment variable)"
    if env == "local":
        return None, "RAY_ADDRESS=local"
    path = _address_file()
    try:
        with open(path) as handle:
            address = handle.read().strip()
    except OSError:
        return None, f"RAY_ADDRESS unset, no address file at {path}"
    if not address:
        return None, f"RAY_ADDRESS unset, address file {path} empty"
    return address, f"the address file {path} (left by `ray start`)"


def _address_file() -> str:
    try:
        from ray._private.utils import get_ray_address_file

        return get_ray_address_file(None)
    except Exception:  # a private helper: if it moves, this is where Ray has always kept it
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        return os.path.join(base, "ray", "ray_current_cluster")


def probe(address: str, timeout: float = 2.0) -> str | None:
    """None if something accepts a connection at ``address`` (host:port, optionally ray://),
    else why not: in seconds, not after Ray's minutes of retries."""
    host_port = address.split("://", 1)[-1]
    host, sep, port = host_port.rpartition(":")
    if not sep or not host:
        return f"{address!r} is not host:port"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _keep_loopback(address: str | None) -> None:
    """Ray rewrites a loopback address to the machine's external IP before connecting, which
    cannot reach a cluster that listens on 127.0.0.1 only (the safe default). For a loopback
    address, keep it: Ray's switch for this is named after Windows/macOS but is generic."""
    host = (address or "").removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "::1") or host.startswith("127."):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for processes started later
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by Ray's address lookup


def _start_local(temp_dir: str | None, num_cpus: int | None, runtime_env: dict | None = None) -> None:
    import ray

    _keep_loopback("127.0.0.1")  # else Ray swaps 127.0.0.1 for the external IP and listens there
    ray.init(
        address="local",
        runtime_env=runtime_env,
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
    global _CONNECTED
    import ray

    _CONNECTED = None
    if ray.is_initialized():
        ray.shutdown()


# --- GPUs ----------------------------------------------------------------------------------


def place_on_gpus(resources) -> list[str]:
    """Check the GPU requests of trials and attack tasks against the connected cluster.

    A request the cluster can meet now, or that its autoscaler can meet by adding GPU nodes
    (``ray up`` / KubeRay worker types with GPUs, up to their max_workers), is kept. A request
    no node has and none can be added for would wait forever: it is dropped (the work runs on
    CPUs) with a warning. Returns the lines to print; ``resources`` (a ResourceConfig) is
    changed in place.
    """
    import ray

    asked = {"--gpus-per-trial": resources.gpus_per_trial,
             "--gpus-per-attack-task": resources.gpus_per_attack_task}
    asked = {flag: value for flag, value in asked.items() if value and value > 0}
    if not asked:
        return []
    wanted = ", ".join(f"{flag} {value:g}" for flag, value in asked.items())
    now = ray.cluster_resources().get("GPU", 0)
    if now > 0:
        per_node = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        lines = [f"GPUs: {now:g} in the cluster (at most {per_node:g} on one node); {wanted}"]
        too_big = [flag for flag, value in asked.items() if value > per_node]
        if too_big and max_autoscaled("GPU") in (None, 0):
            raise UserError(f"{', '.join(too_big)} asks for more GPUs than any node has ({per_node:g}); "
                            "lower it (fractions like 0.5 share a GPU)")
        return lines
    can_add = max_autoscaled("GPU")
    if can_add:
        return [f"GPUs: none up yet; the autoscaler can add up to {can_add:g} (trials wait for GPU "
                f"nodes to start); {wanted}"]
    resources.gpus_per_trial = 0.0
    resources.gpus_per_attack_task = 0.0
    return [f"warning: {wanted} asked for GPUs, but this Ray cluster has none and no autoscaler "
            "can add any: trials and attack tasks run on CPUs instead"]


def max_autoscaled(resource: str) -> float | None:
    """How much of ``resource`` the cluster's autoscaler may bring up at most (the sum over its
    node types of max workers x resource per node), or None without an autoscaler config."""
    try:
        from ray._private import state

        limits = state.state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: without it, assume nothing can be added
        return None
    if not limits:
        return None
    return float(limits.get(resource, 0) or 0)
