"""A throwaway PostgreSQL cluster for the tests: Debian's server, run as the postgres user on a free
loopback port, with one fresh database per tracking server; removed when the session ends."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CLUSTER_OWNER = "postgres"  # initdb refuses to run as root


def server_binaries() -> Path:
    """The folder of initdb and pg_ctl: on PATH, or where Debian keeps them (/usr/lib/postgresql/N/bin)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not installed:
        # Not a skip: a shared server is tested on PostgreSQL or not at all. `make test` installs it.
        pytest.fail("PostgreSQL is not installed; the tracking-server tests need it: run `make test`, or "
                    "`apt-get update && apt-get install -y postgresql` (as root)")
    return installed[-1].parent


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", CLUSTER_OWNER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    result = subprocess.run(_as_owner(command), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def start_cluster(port: int) -> dict[str, str]:
    """Starts a cluster on 127.0.0.1:``port``; returns what ``stop_cluster`` needs (plain strings,
    so that another process of the session may stop it) and its base URI under ``uri``."""
    binaries = server_binaries()
    root = Path(tempfile.mkdtemp(prefix="retina-flow-postgres-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(CLUSTER_OWNER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    try:
        # Trust on loopback only, no fsync: a cluster that lives for one test session.
        _run([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--no-sync", "--no-instructions"])
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c full_page_writes=off"
        _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
              "-o", options, "start"])
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return {"uri": f"postgresql://postgres@127.0.0.1:{port}", "root": str(root), "pg_ctl": str(binaries / "pg_ctl")}


def stop_cluster(cluster: dict[str, str]) -> None:
    """Stops a cluster ``start_cluster`` started and removes its files."""
    try:
        _run([cluster["pg_ctl"], "-D", str(Path(cluster["root"]) / "data"), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(cluster["root"], ignore_errors=True)


def create_database(cluster_uri: str, name: str) -> str:
    """A new, empty database of the cluster; returns its URI, as ``mlflow server`` takes it."""
    import psycopg

    # CREATE DATABASE cannot run inside a transaction.
    with psycopg.connect(f"{cluster_uri}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{cluster_uri}/{name}"
