"""Several OpenAI-compatible endpoints serving one model, as one pool: which endpoint a request
goes to, how many requests each has in flight, and which are down.

A request takes the live endpoint with the fewest requests in flight (ties in turn, so requests
sent one at a time still spread), never more than `max_concurrency` on one endpoint. A request
waiting for a slot waits for the first that frees on any endpoint, rather than queueing behind one
endpoint chosen up front, so a slow or lost endpoint does not hold work the others could do.

An endpoint that failed (after the client's own retries) is down for `down_for_s`; then requests
try it again. The pool only counts and chooses: sending, and what counts as a failure, is the
backend's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from scoder.errors import ScoderError


@dataclass
class Endpoint:
    url: str
    index: int
    in_flight: int = 0
    failures: int = 0  # times it was found down
    down_until: float = 0.0
    reason: str | None = None  # why it was last found down
    adapters: set[str] = field(default_factory=set)  # served adapter names it has


class NoEndpointLeft(Exception):
    """Every endpoint is down, or has failed this very request."""


class EndpointLost(Exception):
    """An endpoint could not be reached: the caller marks it down."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EndpointPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        max_concurrency: int,
        down_for_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        bare = [url.rstrip("/") for url in urls]
        if not urls or len(set(bare)) != len(bare):
            raise ScoderError(f"the endpoints must be distinct and at least one (got {list(urls)})")
        self.endpoints = [Endpoint(url, i) for i, url in enumerate(urls)]
        self.max_concurrency = max_concurrency
        self.down_for_s = down_for_s
        self._clock = clock
        self._turn = 0  # where the next tie goes
        self._changed: asyncio.Event | None = None

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def is_down(self, endpoint: Endpoint) -> bool:
        return endpoint.down_until > self._clock()

    def live(self) -> list[Endpoint]:
        return [e for e in self.endpoints if not self.is_down(e)]

    def down(self) -> list[Endpoint]:
        return [e for e in self.endpoints if self.is_down(e)]

    def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        """Take `endpoint` out for a while and, with others to carry on, say so: once, though
        every request in flight there finds out."""
        was_down = self.is_down(endpoint)
        endpoint.down_until = self._clock() + self.down_for_s
        endpoint.reason = reason
        if not was_down:
            endpoint.failures += 1
            if len(self.endpoints) > 1:
                print(
                    f"scoder: {reason}; down for {self.down_for_s:g} s, its requests go to the "
                    f"other endpoints ({len(self.live())} of {len(self.endpoints)} live)",
                    file=sys.stderr,
                    flush=True,
                )
        self._notify()  # a waiting request may now have nowhere to go

    def nothing_left(
        self, adapter: str | None, *, skip: Iterable[int] = (), resumable: bool = False
    ) -> ScoderError:
        """The error when no endpoint can take a request: each is down, failed this very request
        (`skip`) or lacks the adapter asked for; with why. One endpoint: its own reason alone."""
        skip = set(skip)
        why = []
        for e in self.endpoints:
            if e.reason and (self.is_down(e) or e.index in skip):
                why.append(e.reason)
            elif adapter and adapter not in e.adapters:
                why.append(f"{e.url} has not loaded {adapter}")
        text = "; ".join(why)
        if len(self.endpoints) > 1:
            text = f"every endpoint is down: {text}"
        if resumable:
            text += "; finished requests are kept, run again to resume"
        return ScoderError(text)

    def start(self) -> None:
        """Before each batch of requests (each in its own event loop): nothing in flight; and
        when every endpoint is down, each is tried again (waiting out the rest would gain
        nothing: a new batch is a new try, as it is with one endpoint)."""
        everyone_down = not self.live()
        for e in self.endpoints:
            e.in_flight = 0
            if everyone_down:
                e.down_until = 0.0
        self._changed = None  # an Event belongs to the loop it was awaited in

    async def acquire(self, exclude: Iterable[int] = ()) -> Endpoint:
        """A slot on the least busy live endpoint not in `exclude` (indices), waiting while each
        is full; NoEndpointLeft when there is none."""
        skip = set(exclude)
        while True:
            candidates = [e for e in self.live() if e.index not in skip]
            if not candidates:
                raise NoEndpointLeft
            free = [e for e in candidates if e.in_flight < self.max_concurrency]
            if free:
                n = len(self.endpoints)
                chosen = min(free, key=lambda e: (e.in_flight, (e.index - self._turn) % n))
                chosen.in_flight += 1
                self._turn = (chosen.index + 1) % n
                return chosen
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        self._notify()

    def _notify(self) -> None:
        # wake every waiter (each looks again) and give later waiters a fresh Event
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def failures(self) -> dict[str, int]:
        return {e.url: e.failures for e in self.endpoints if e.failures}
