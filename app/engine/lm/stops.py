"""Stop strings at the text level: emitted text never contains a stop string.

Text that could be the start of a stop string is held back until it is clear either way.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._holdback = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.matched: str | None = None  # the stop string that ended generation, once hit

    def feed(self, text: str) -> tuple[str, bool]:
        """Add new text; return (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        self._pending += text
        found = [(i, stop) for stop in self.stops if (i := self._pending.find(stop)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda hit: hit[0])
            out, self._pending = self._pending[:cut], ""
            return out, True
        keep = self._holdback
        if keep == 0 or len(self._pending) <= keep:
            if keep == 0:
                out, self._pending = self._pending, ""
                return out, False
            return "", False
        out, self._pending = self._pending[:-keep], self._pending[-keep:]
        return out, False

    def flush(self) -> str:
        """At the end of generation, release whatever was held back."""
        out, self._pending = self._pending, ""
        return out
