"""Stored responses (``store: true``): SQLite in the cache dir, bounded by age and bytes.

Each row keeps a response object, the input items of the request that made it (with ids),
and the id of the response it continued, so ``previous_response_id`` rebuilds the whole
conversation after a restart. Calls run in a worker thread; one connection, one lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    previous_id TEXT,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    item TEXT NOT NULL
);
"""
MAX_CHAIN = 1000  # previous_response_id links followed at most (a loop cannot hang us)


class ResponseStore:
    """Persisted responses for ``previous_response_id``, ``GET`` and ``input_items``."""

    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- async API (the event loop never waits on the disk) ---------------------------------
    async def put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._put, response, input_items)

    async def get(self, response_id: str) -> dict[str, Any] | None:
        row = await asyncio.to_thread(self._row, response_id)
        return None if row is None else json.loads(row[0])

    async def input_items(self, response_id: str) -> list[dict[str, Any]] | None:
        row = await asyncio.to_thread(self._row, response_id)
        return None if row is None else json.loads(row[1])

    async def delete(self, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id)

    async def history(self, response_id: str) -> list[dict[str, Any]] | None:
        """Every item of the conversation up to and including ``response_id``'s output."""
        return await asyncio.to_thread(self._history, response_id)

    async def item(self, item_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._item, item_id)

    # -- worker-thread side ---------------------------------------------------------------
    def _put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        body, items = json.dumps(response), json.dumps(input_items)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                    (response["id"], time.time(), response.get("previous_response_id"),
                     body, items, len(body) + len(items)),
                )
                for item in input_items + response.get("output", []):
                    if isinstance(item.get("id"), str):
                        self._db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                                         (item["id"], response["id"], json.dumps(item)))
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _evict(self) -> None:
        """Drop rows past the age limit, then the oldest until the byte budget holds."""
        self._db.execute("DELETE FROM responses WHERE created_at < ?",
                         (time.time() - self.max_age_s,))
        total = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM responses").fetchone()[0]
        while total > self.max_bytes:
            oldest = self._db.execute(
                "SELECT id, bytes FROM responses ORDER BY created_at LIMIT 1").fetchone()
            if oldest is None:
                break
            self._db.execute("DELETE FROM responses WHERE id = ?", (oldest[0],))
            total -= oldest[1]

    def _row(self, response_id: str) -> tuple[str, str, str | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, input_items, previous_id, created_at FROM responses "
                "WHERE id = ?", (response_id,)).fetchone()
        if row is None or row[3] < time.time() - self.max_age_s:
            return None
        return row[0], row[1], row[2]

    def _delete(self, response_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def _history(self, response_id: str) -> list[dict[str, Any]] | None:
        chain: list[tuple[str, str]] = []
        current: str | None = response_id
        while current is not None and len(chain) < MAX_CHAIN:
            row = self._row(current)
            if row is None:
                if not chain:
                    return None
                break  # an expired or deleted ancestor: the conversation starts after it
            chain.append((row[1], row[0]))
            current = row[2]
        items: list[dict[str, Any]] = []
        for input_items, response in reversed(chain):
            items += json.loads(input_items) + json.loads(response).get("output", [])
        return items

    def _item(self, item_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT item FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else json.loads(row[0])


def open_store(path: Path, *, max_bytes: int, max_age_s: float) -> ResponseStore:
    """The store at ``path``; a file that is not a readable store is set aside (renamed
    ``*.corrupt``) and a new one started, so a damaged file never stops the server."""
    try:
        return ResponseStore(path, max_bytes=max_bytes, max_age_s=max_age_s)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(path.name + ".corrupt")
        log.warning("responses store %s is unreadable (%s); moved to %s", path, exc, aside)
        path.replace(aside)
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return ResponseStore(path, max_bytes=max_bytes, max_age_s=max_age_s)
