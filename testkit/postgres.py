"""A throw-away PostgreSQL server for tests and benchmarks: Debian's ``postgresql``
package, a new cluster in a temporary directory (``initdb`` + ``pg_ctl``), listening on
127.0.0.1 at a free port, stopped and removed afterwards.

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` system
user the package creates, and its commands run as that user (``setpriv``). Authentication
is ``trust`` for the cluster's one superuser, ``pybuild``: the server listens on loopback
only and lives as long as the test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .tools import DEBIAN_PACKAGE, missing, require_tool

__all__ = ["PostgresServer", "find_pg_bin", "postgres_server"]

DEBIAN_PACKAGE.setdefault("initdb", "postgresql")
DEBIAN_PACKAGE.setdefault("pg_ctl", "postgresql")


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    datadir: Path
    # pg_ctl with this cluster's options (as its owner), and the environment to run it in
    ctl: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def stop(self) -> None:
        """Stop the server, closing every client's connection (``-m fast``: what clients
        see of a database going down; with ``synchronous_commit=off`` an immediate stop
        would also lose the last commits); :meth:`start` brings it back on the same port
        with the same data."""
        subprocess.run([*self.ctl, "-m", "fast", "-w", "stop"], check=True,
                       capture_output=True, env=dict(self.env), timeout=60)

    def start(self) -> None:
        subprocess.run([*self.ctl, "-w", "-t", "60", "start"], check=True,
                       capture_output=True, env=dict(self.env), timeout=90)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection URI for ``dbname``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a fresh one per test keeps tests apart); its URI."""
        import psycopg  # the tests' driver; imported here so testkit needs it only for this

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def find_pg_bin() -> Path | None:
    """The directory of the newest installed PostgreSQL's server programs, or None."""
    base = Path("/usr/lib/postgresql")
    versions = sorted((p for p in base.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_server(base: Path | None = None) -> Iterator[PostgresServer]:
    """Start a new PostgreSQL cluster; yield it; stop it and delete its files."""
    bindir = find_pg_bin()
    if bindir is None:
        missing("PostgreSQL is not installed; install postgresql "
                "(`bash tests/run` installs every package the tests need)")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            missing("the postgres system user does not exist; install postgresql")
        as_user = [require_tool("setpriv"), f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}",
                   "--init-groups", "--"]
    top = Path(tempfile.mkdtemp(prefix="pbpg", dir=base or "/tmp"))
    datadir, sockdir = top / "data", top / "s"
    sockdir.mkdir()
    if owner is not None:
        os.chmod(top, 0o755)
        for p in (top, sockdir):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    port = _free_port()
    log = top / "postgres.log"
    started = False
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(datadir), "-U", "pybuild",
                        "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, env=env, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={sockdir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        server = PostgresServer("127.0.0.1", port, "pybuild", datadir,
                                (*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-l",
                                 str(log), "-o", options), tuple(env.items()))
        server.start()
        started = True
        yield server
    except subprocess.CalledProcessError as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc.cmd[len(as_user)]} failed: {exc.stderr.decode(errors='replace')}"
                           f"{tail}") from exc
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-m",
                            "immediate", "-w", "stop"], capture_output=True, env=env, timeout=60,
                           check=False)
        shutil.rmtree(top, ignore_errors=True)
