"""Exposure (issue 8): the local Ray instance the sweep starts listens on 127.0.0.1 only, runs no
dashboard, and keeps Ray's token authentication on; the project binds nothing to all interfaces."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parent.parent


def _psutil():
    import ray

    sys.path.insert(0, str(Path(ray.__file__).parent / "thirdparty_files"))  # psutil ships with Ray
    import psutil

    return psutil


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.fixture(scope="module")
def local_ray():
    """The local Ray instance the sweep starts (``--cluster local``), shared by this module."""
    import shutil

    import ray

    from sweep.infra.cluster import connect, shutdown
    from tests.sweep_helpers import short_tmp_dir

    ray_tmp = short_tmp_dir()
    address = os.environ.pop("RAY_ADDRESS", None)
    message = connect("local", temp_dir=ray_tmp, num_cpus=1)

    @ray.remote
    def ping():
        return 1

    assert ray.get(ping.remote()) == 1  # a worker process is up too
    try:
        yield message
    finally:
        shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if address is not None:
            os.environ["RAY_ADDRESS"] = address


@pytest.mark.slow
def test_local_ray_keeps_token_authentication_and_runs_no_dashboard(local_ray):
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    psutil = _psutil()
    assert "127.0.0.1" in local_ray
    assert is_token_auth_enabled(), "Ray's token authentication is off"
    ray_processes = psutil.Process().children(recursive=True)
    names = [" ".join(p.cmdline()) for p in ray_processes]
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names)
    for proc in ray_processes:
        if any(name in " ".join(proc.cmdline()) for name in ("gcs_server", "raylet")):
            assert proc.environ().get("RAY_AUTH_MODE") == "token", proc.cmdline()[:1]
    # include_dashboard=False: Ray keeps a minimal head process (usage stats) with no web UI
    # and no listening socket of its own
    for proc in ray_processes:
        command = " ".join(proc.cmdline())
        if "dashboard/dashboard.py" in command:
            assert "--minimal" in command and "--disable-frontend" in command, command
            assert not [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert ray.get_runtime_context().gcs_address  # connected


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(local_ray):
    import ray

    psutil = _psutil()
    listening = []
    for proc in psutil.Process().children(recursive=True) + [psutil.Process()]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.append((proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    assert listening
    exposed = [entry for entry in listening if not _is_loopback(entry[1])]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_project_binds_nothing_to_all_interfaces():
    """No code of the project names a wildcard address (Ray, the dashboard or MLflow bind to
    127.0.0.1 unless a user passes another address explicitly)."""
    offenders = []
    for package in ("models", "attacks", "sweep", "analysis"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for wildcard in ('"0.0.0.0"', "'0.0.0.0'", '"::"', "dashboard_host"):
                if wildcard in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {wildcard}")
    assert not offenders
    readme = (ROOT / "README.md").read_text()
    assert "127.0.0.1" in readme
