"""Rate limits in this process's memory (``state.backend: memory``): exact for one worker.

Requests per minute are a sliding log of admission times; tokens per minute a sliding log of
reservations whose amounts are settled when the request ends (the estimate returned or topped up
to what the answer really used); parallel requests a counter. A request is admitted against every
limit that applies to it (its key's and its team's) or against none, before any upstream call.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from providers.schema import ChatRequest

WINDOW_S: Final = 60.0
PARALLEL_RETRY_S: Final = 1.0  # a slot frees when a request ends: no telling when


@dataclass(slots=True)
class Budget:
    """One subject's (a key's or a team's) limits and what it has used within the window."""

    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    requests: deque[float] = field(default_factory=deque)
    # The token log as two deques of floats, not a deque of entries: at thousands of requests a
    # second a minute's window holds hundreds of thousands of them, and container objects that
    # many would make every garbage collection walk them all. A reservation is found again by
    # its sequence number: ``token_gone`` counts the entries that have left the window.
    token_times: deque[float] = field(default_factory=deque)
    token_amounts: deque[float] = field(default_factory=deque)
    token_gone: int = 0
    token_sum: float = 0.0
    parallel: int = 0

    def expire(self, now: float) -> None:
        start = now - WINDOW_S
        requests = self.requests
        while requests and requests[0] <= start:
            requests.popleft()
        times = self.token_times
        while times and times[0] <= start:
            times.popleft()
            self.token_sum -= self.token_amounts.popleft()
            self.token_gone += 1

    def settle_tokens(self, seq: int, delta: float) -> None:
        """True up reservation ``seq`` by ``delta``, if it is still in the window."""
        index = seq - self.token_gone
        if index >= 0:  # (deques index from their nearer end: a recent entry is found at once)
            self.token_amounts[index] += delta
            self.token_sum += delta

    def refusal(self, now: float, estimate: int) -> Refusal | None:
        """Which limit refuses this request now and how long until it could pass, or None."""
        if self.max_parallel is not None and self.parallel >= self.max_parallel:
            return Refusal("parallel", self.max_parallel, PARALLEL_RETRY_S)
        if self.rpm is not None and len(self.requests) >= self.rpm:
            return Refusal("rpm", self.rpm, self.requests[0] + WINDOW_S - now)
        if self.tpm is not None and self.token_sum + estimate > self.tpm and self.token_times:
            # Wait until enough of the window's tokens have left it (a request larger than the
            # whole limit is admitted into an empty window, or it could never run).
            need, freed = self.token_sum + estimate - self.tpm, 0.0
            for stamp, amount in zip(self.token_times, self.token_amounts, strict=True):
                freed += amount
                if freed >= need:
                    return Refusal("tpm", self.tpm, stamp + WINDOW_S - now)
            return Refusal("tpm", self.tpm, self.token_times[-1] + WINDOW_S - now)
        return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """The limit that refused a request (``rpm``, ``tpm`` or ``parallel``), its value, and the
    seconds until the request could pass."""

    kind: str
    limit: int
    wait_s: float
    index: int = 0  # which of the request's subjects refused it

    def headers(self) -> tuple[tuple[str, str], ...]:
        """OpenAI's rate-limit headers for the exhausted limit."""
        if self.kind == "parallel":
            return ()
        kind = "requests" if self.kind == "rpm" else "tokens"
        return (
            (f"x-ratelimit-limit-{kind}", str(self.limit)),
            (f"x-ratelimit-remaining-{kind}", "0"),
            (f"x-ratelimit-reset-{kind}", duration(self.wait_s)),
        )


@dataclass(slots=True)
class Headroom:
    """What the most constrained subject has left, for OpenAI's ``x-ratelimit-*`` headers."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if self.limit_requests is not None and self.remaining_requests is not None:
            out += (
                (b"x-ratelimit-limit-requests", b"%d" % self.limit_requests),
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, self.remaining_requests)),
                (b"x-ratelimit-reset-requests", duration(self.reset_requests_s).encode()),
            )
        if self.limit_tokens is not None and self.remaining_tokens is not None:
            out += (
                (b"x-ratelimit-limit-tokens", b"%d" % self.limit_tokens),
                (b"x-ratelimit-remaining-tokens", b"%d" % max(0, self.remaining_tokens)),
                (b"x-ratelimit-reset-tokens", duration(self.reset_tokens_s).encode()),
            )
        return out


def duration(seconds: float) -> str:
    """OpenAI's format for resets: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    if whole <= WHOLE_WINDOW:  # every answer carries one or two: most are a table lookup
        return _SECONDS[whole]
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


WHOLE_WINDOW: Final = 60
_SECONDS: Final = tuple(f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s" for s in range(WHOLE_WINDOW + 1))


class Admitted(Protocol):
    headroom: Headroom

    def settle(self, tokens: int | None) -> None:
        """Give back the parallel slot and true up the token reservation (once)."""
        ...


class Admission:
    """One admitted request's share of its subjects' limits in this process; ``settle`` (once)
    gives back the parallel slot and trues up the token reservation."""

    __slots__ = ("_estimate", "_seqs", "_settled", "_subjects", "headroom")

    def __init__(self, subjects: Sequence[Budget], seqs: Sequence[int], estimate: int, headroom: Headroom) -> None:
        self._subjects = subjects
        self._seqs = seqs  # each subject's reservation (-1: no tpm)
        self._estimate = estimate
        self._settled = False
        self.headroom = headroom

    def settle(self, tokens: int | None) -> None:
        """``tokens``: what the request used (None: unknown, the estimate stands)."""
        if self._settled:
            return
        self._settled = True
        for subject in self._subjects:
            subject.parallel -= 1
        if tokens is None or tokens == self._estimate:
            return
        delta = tokens - self._estimate
        for subject, seq in zip(self._subjects, self._seqs, strict=True):
            if seq >= 0:
                subject.settle_tokens(seq, delta)


class Limiter:
    """Every subject's budget in this process, keyed by subject id (``key:…``, ``team:…``)."""

    def __init__(self) -> None:
        self._subjects: dict[str, Budget] = {}

    def subject(self, name: str, rpm: int | None, tpm: int | None, max_parallel: int | None) -> Budget:
        budget = self._subjects.get(name)
        if budget is None:
            budget = self._subjects[name] = Budget(rpm, tpm, max_parallel)
        else:  # limits edited since: the usage so far stays
            budget.rpm, budget.tpm, budget.max_parallel = rpm, tpm, max_parallel
        return budget

    def admit(self, subjects: Sequence[Budget], estimate: int, now: float) -> Admission | Refusal:
        """Admit against every subject or none: the admission, or the refusal and its wait."""
        for i, subject in enumerate(subjects):
            subject.expire(now)
            refused = subject.refusal(now, estimate)
            if refused is not None:
                return Refusal(refused.kind, refused.limit, refused.wait_s, i)
        seqs: list[int] = []
        headroom = Headroom()
        for subject in subjects:
            subject.parallel += 1
            rpm, tpm = subject.rpm, subject.tpm
            if rpm is not None:
                requests = subject.requests
                requests.append(now)
                left = rpm - len(requests)
                if headroom.remaining_requests is None or left < headroom.remaining_requests:
                    headroom.limit_requests, headroom.remaining_requests = rpm, left
                    headroom.reset_requests_s = requests[0] + WINDOW_S - now
            if tpm is not None:
                times = subject.token_times
                seqs.append(subject.token_gone + len(times))
                times.append(now)
                subject.token_amounts.append(float(estimate))
                subject.token_sum += estimate
                left = int(tpm - subject.token_sum)
                if headroom.remaining_tokens is None or left < headroom.remaining_tokens:
                    headroom.limit_tokens, headroom.remaining_tokens = tpm, left
                    headroom.reset_tokens_s = times[0] + WINDOW_S - now
            else:
                seqs.append(-1)
        return Admission(subjects, seqs, estimate, headroom)


COMPLETION_ESTIMATE: Final = 256  # reserved for an answer whose request sets no max_tokens


def estimate_tokens(chat: ChatRequest) -> int:
    """What a request is reserved at admission: its prompt at about four characters a token, plus
    its answer's cap (``max_completion_tokens``, ``max_tokens``) or ``COMPLETION_ESTIMATE``. The
    real usage settles it when the request ends."""
    chars = 0
    for message in chat.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.text) for part in content if isinstance(part.text, str))
    cap = chat.max_completion_tokens if isinstance(chat.max_completion_tokens, int) else chat.max_tokens
    return chars // 4 + 1 + (cap if isinstance(cap, int) else COMPLETION_ESTIMATE)
