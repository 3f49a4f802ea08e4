"""Server processes on the test database: the project served by uvicorn, as deployed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url() -> str:
    """The test database as a ``DATABASE_URL`` (PostgreSQL, or SQLite's file)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class ServerProcesses(list):
    """``with ServerProcesses(2, tmp_path, REDIS_URL=...) as urls``: that many uvicorn
    processes of the project on the test database; ``stop()`` ends them as a process
    manager does (SIGTERM). Environment overrides given as keywords (``""`` unsets)."""

    def __init__(self, count: int, logs: Path, **environ: str) -> None:
        super().__init__()
        self.count, self.logs = count, logs
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": database_url(),
            "LLM_LOG_LEVEL": "WARNING",
        }
        for name, value in environ.items():
            if value:
                self.env[name] = value
            else:
                self.env.pop(name, None)
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> ServerProcesses:
        for i in range(self.count):
            port = free_port()
            log = open(self.logs / f"server{i}.log", "w")
            command = [
                sys.executable,
                "-X",
                "faulthandler",  # SIGABRT writes every thread's stack to the log
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            self.procs.append(
                subprocess.Popen(
                    [*command, "--log-level", "warning", "project.asgi:application"],
                    cwd=settings.BASE_DIR,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            self.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        for i, url in enumerate(self):
            while True:
                try:
                    httpx.get(f"{url}/api/v1/models", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        self.stop()
                        log = (self.logs / f"server{i}.log").read_text()
                        raise RuntimeError(log) from None
                    time.sleep(0.1)
        return self

    def stop(self) -> None:
        """SIGTERM, then up to 30 s for each to finish its requests and its lifespan
        shutdown; one that does not is killed, and its log shown."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        stuck = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGABRT)  # faulthandler: where each thread waits
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
                stuck.append(f"server{i}: {(self.logs / f'server{i}.log').read_text()[-8000:]}")
        if stuck:
            raise AssertionError("a server did not stop on SIGTERM:\n" + "\n".join(stuck))

    def __exit__(self, *exc_info) -> None:
        self.stop()
