"""A throwaway PostgreSQL server on a free loopback port, for the collector's tests and benchmark.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (runuser) in a
temporary folder that user owns; as anyone else it runs as that user. Never for production: trust
authentication, fsync off unless `durable`, one folder deleted on stop.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from devkit.localbroker import free_port

PG_BIN = Path(os.environ.get("EDGED_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed here."""


class LocalPostgres:
    """postgres on 127.0.0.1:<port>, user `postgres` without a password; `dsn(db)` to connect."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable  # fsync and synchronous commits as in production (the benchmark); off for tests
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edged-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @staticmethod
    def available() -> bool:
        """Whether initdb and pg_ctl are installed (scripts/setup.sh dev installs them)."""
        return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.dir)

    def start(self) -> None:
        """initdb (fast, no fsync) and start; waits until the server accepts connections."""
        if not self.available():
            raise PostgresUnavailable(f"PostgreSQL is not installed in {PG_BIN} (scripts/setup.sh dev installs it)")
        if not self.data.exists():  # a restart (after `halt`) keeps the data
            self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                      "-E", "UTF8", "--locale", "C")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "-t", "60", "start")

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string to database `dbname` of this server."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its connection string."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def halt(self) -> None:
        """Stop the server (fast shutdown: connections are cut) keeping its data; `start` again resumes."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)
