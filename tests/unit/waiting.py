"""Polling for a condition that another thread (an engine, a server) makes true."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@contextmanager
def ready_client(settings: Any, registry: Any, timeout: float = 120.0) -> Iterator[Any]:
    """A ``TestClient`` on the app for ``registry``, once ``/ready`` answers 200."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings, registry)) as client:
        deadline = time.monotonic() + timeout
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").text
            time.sleep(0.05)
        yield client
