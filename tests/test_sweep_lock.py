"""The results-folder lock on a local folder, the address ``--cluster auto`` would join, and the
progress lines of a run whose output is not a terminal: real processes, files and sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.errors import UserError
from results.store import Store
from sweep.infra.cluster import auto_address, probe
from sweep.infra.lock import LOCK_FILE, hold
from sweep.infra.progress import Progress

HOLD = ("import sys, time\nfrom sweep.infra.lock import hold\nfrom results.store import Store\n"
        "with hold(Store(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n")


def start_holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_held_folder_is_refused_naming_its_holder_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(UserError) as refused:
            with hold(Store(tmp_path)):
                pytest.fail("two holders at once")
        message = str(refused.value)
        assert f"--out {tmp_path} is in use by pid {holder.pid} on {socket.gethostname()}, started " in message
        assert str(tmp_path / LOCK_FILE) in message and "another --out" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without removing its lock file
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()

    with hold(Store(tmp_path)) as record:
        said = capsys.readouterr().out
        assert f"took over {tmp_path / LOCK_FILE} from pid {holder.pid} on {socket.gethostname()}" in said
        assert "no longer running" in said
        assert record["pid"] == os.getpid() and f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()
    assert not (tmp_path / LOCK_FILE).exists()  # released
    with hold(Store(tmp_path)):  # and free for the next sweep, without a take-over
        assert "took over" not in capsys.readouterr().out


def test_auto_address_names_its_source_and_a_dead_address_is_seen_in_seconds(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert auto_address() == (None, f"RAY_ADDRESS unset, no address file at {tmp_path}/ray/ray_current_cluster")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    address, source = auto_address()
    assert address == "127.0.0.1:1" and str(tmp_path / "ray" / "ray_current_cluster") in source
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:2")
    assert auto_address() == ("ray://127.0.0.1:2", "RAY_ADDRESS (environment variable)")

    started = time.monotonic()
    assert "refused" in probe("127.0.0.1:1").lower()
    assert "not host:port" in probe("nowhere")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert probe(f"ray://127.0.0.1:{server.getsockname()[1]}") is None
    assert time.monotonic() - started < 5


def test_progress_without_a_terminal_prints_whole_lines_with_counts_rate_and_eta(capsys):
    progress = Progress("attacks", 10, already_done=2, unit="task", line_seconds=0)
    time.sleep(0.2)
    progress.update(6, "4 queued or running")
    progress.update(10, "0 queued or running")
    progress.close()
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.startswith("attacks: ") for line in lines)
    assert " 6/10 " in lines[0] and "4 queued or running" in lines[0]
    assert "task/s" in lines[0] or "s/task" in lines[0]
    assert "<" in lines[0].split("[", 1)[1]  # elapsed<remaining
    assert "100%" in lines[-1] and " 10/10 " in lines[-1]
