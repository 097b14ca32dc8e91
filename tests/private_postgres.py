"""A PostgreSQL server a test owns, for faults the shared one must never see: frozen.

``initdb`` into a temporary directory, ``postgres`` on a free loopback port (its own
session, trust authentication, no fsync). :meth:`PrivatePostgres.freeze` stops the
postmaster and every backend with SIGSTOP, as a server that stopped answering: the
kernel still accepts connections and acknowledges bytes, nothing comes back, and the
server's own timers (statement_timeout) are frozen too. :meth:`PrivatePostgres.thaw`
lets them run on.

Run as root (the test machines), the server runs as the ``postgres`` user: initdb
refuses root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import URL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class PrivatePostgres:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="carebridge-private-pg-"))
        self.data = self.directory / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            account = pwd.getpwnam(self._user)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._server: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []

    def url(self, database: str = "postgres") -> URL:
        return URL.create(
            "postgresql+psycopg",
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database=database,
        )

    def start(self) -> None:
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
                str(self.data),
            ],
            check=True,
            capture_output=True,
            user=self._user,
        )
        self._server = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.directory),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=80",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self._user,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                ready = subprocess.run(
                    [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                    capture_output=True,
                    check=False,
                )
                if ready.returncode == 0:
                    return
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private PostgreSQL did not start")
            time.sleep(0.1)

    def freeze(self) -> None:
        """SIGSTOP the postmaster (so it forks no one new), then each of its children."""
        assert self._server is not None
        os.kill(self._server.pid, signal.SIGSTOP)
        self._frozen = [self._server.pid]
        for pid in _children(self._server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self._frozen.append(pid)

    def thaw(self) -> None:
        for pid in reversed(self._frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def stop(self) -> None:
        self.thaw()
        if self._server is not None:
            # SIGQUIT: immediate shutdown, the backends told to exit at once.
            with contextlib.suppress(ProcessLookupError):
                self._server.send_signal(signal.SIGQUIT)
            try:
                self._server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
