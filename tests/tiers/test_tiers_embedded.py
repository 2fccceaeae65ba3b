"""The embedded Valkey: a fixed port, its URL in the log, and no server left behind when its
parent process is killed with SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import valkey

from pagedkv.tiers import TierConfigError, embedded_valkey
from pagedkv.tiers.embedded import _free_port, embedded_port, is_embedded

_PARENT = r"""
import time
from pagedkv.tiers import embedded_valkey
server = embedded_valkey(maxmemory="16mb")
print(server.port, flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    """The process ended (a zombie not yet reaped by its new parent counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # Linux: a zombie still answers kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state in ("Z", "X")


def test_server_dies_with_a_parent_killed_by_sigkill() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        port = int(parent.stdout.readline())
        client = valkey.Valkey(port=port, socket_timeout=5)
        info = client.info("server")
        pid, folder = int(info["process_id"]), Path(info["config_file"]).parent
        client.close()
        assert not _gone(pid)
        assert folder.is_dir()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), "valkey-server outlived its killed parent"
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not folder.exists()  # its temporary folder is removed too
    finally:
        parent.kill()
        parent.wait(10)


def test_fixed_port_is_used_logged_and_refused_when_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    with caplog.at_level(logging.INFO, logger="pagedkv.tiers"):
        server = embedded_valkey(port=port, maxmemory="16mb")
    try:
        assert server.port == port
        assert server.url == f"redis://127.0.0.1:{port}"
        assert server.url in caplog.text
        with pytest.raises(
            TierConfigError, match=f"port {port} is in use.*redis://127.0.0.1:{port}"
        ):
            embedded_valkey(port=port)
        assert valkey.Valkey(port=port).ping()
        dog = server.watchdog
    finally:
        server.stop()
    assert dog is not None
    assert dog.returncode == 0  # told the server was stopped on purpose: it just exits
    with pytest.raises(valkey.ConnectionError):
        valkey.Valkey(port=port, socket_connect_timeout=1).ping()


def test_embedded_specs() -> None:
    assert is_embedded("embedded")
    assert is_embedded("embedded:6390")
    assert not is_embedded("redis://127.0.0.1:6390")
    assert embedded_port("embedded") is None
    assert embedded_port("embedded:6390") == 6390
    for bad in ("embedded:", "embedded:x", "embedded:0", "embedded:70000", "embedded:-1"):
        with pytest.raises(TierConfigError, match="embedded:PORT"):
            embedded_port(bad)
