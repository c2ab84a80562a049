"""Open-file limit: raise the soft RLIMIT_NOFILE and size the connection cap under it.

Every connection is a file descriptor; so are model files, pipes and MLX's threads' files.
The default soft limit (often 1024) is far below what the connection cap allows, so the
server raises it to the hard limit at start (always allowed without privileges) and keeps
the cap ``RESERVED_FDS`` below whatever it got.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

RESERVED_FDS = 128  # for everything that is not a client connection
_TARGET = 1 << 20  # when the hard limit is unlimited


def raise_nofile_limit() -> int | None:
    """Raise the soft open-file limit as far as allowed; the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(requested: int, nofile_soft: int | None) -> int:
    """The connection cap that fits under the open-file limit."""
    if nofile_soft is None:
        return requested
    fits = max(1, nofile_soft - RESERVED_FDS)
    if fits < requested:
        log.warning("max_connections %d lowered to %d to fit the open-file limit %d",
                    requested, fits, nofile_soft)
    return min(requested, fits)


def import_mlx_lm_keeping_nofile() -> None:
    """Import mlx-lm without letting it lower the open-file limits.

    ``mlx_lm.utils`` calls ``setrlimit(RLIMIT_NOFILE, (2048, 4096))`` when imported: it
    lowers the hard limit for good (an unprivileged process cannot raise it back), which
    would cap the server at ~2,000 sockets. Importing it first with that call skipped keeps
    the limits the server was started with.
    """
    import resource

    real = resource.setrlimit

    def keep_nofile(which: int, limits: tuple[int, int]) -> None:
        if which != resource.RLIMIT_NOFILE:
            real(which, limits)

    resource.setrlimit = keep_nofile
    try:
        import mlx_lm.utils  # noqa: F401
    finally:
        resource.setrlimit = real
