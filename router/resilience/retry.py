"""The one retry policy (tenacity): which failures a target gets another try for, and how long
to wait first. Retries sleep through an injectable function."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from providers.errors import UpstreamError
from router.config import RetryConfig

Sleep = Callable[[float], Awaitable[None]]


class _StopAtDeadline(stop_base):
    """Stop when the next try, after its wait, could not start before the request's deadline."""

    def __init__(self, fits: Callable[[float], bool]) -> None:
        self._fits = fits

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self._fits(retry_state.upcoming_sleep)


class RetryPolicy:
    """Which failures a target gets another try for, and how long to wait first.

    Retryable: connection errors and 408, 409, 429, 500, 502, 503, 504, 529. A ``Retry-After`` up
    to ``max_retry_after_s`` is waited for; a longer one means "go elsewhere now". Timeouts are
    never retried on the same target.
    """

    def __init__(self, cfg: RetryConfig, sleep: Sleep) -> None:
        self.cfg = cfg
        self.sleep = sleep
        self._backoff = wait_exponential_jitter(
            multiplier=cfg.initial_backoff_s, max=cfg.max_backoff_s, jitter=cfg.initial_backoff_s
        )
        self._template = AsyncRetrying()

    def should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, UpstreamError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= self.cfg.max_retry_after_s

    def delay(self, exc: BaseException, attempt: int) -> float:
        """The wait before try ``attempt + 1`` after ``exc`` failed try ``attempt``."""
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            return exc.retry_after
        state = RetryCallState(self._template, None, (), {})
        state.attempt_number = attempt
        return min(float(self._backoff(state)), self.cfg.max_backoff_s)

    def retrying(self, first_attempt_done: int, fits: Callable[[float], bool]) -> AsyncRetrying:
        """Tenacity for the tries after the first ``first_attempt_done`` (the first try runs
        outside tenacity, so a healthy request pays nothing for it). ``fits(delay)`` says whether
        a try after that wait could still start before the deadline."""

        def wait(state: RetryCallState) -> float:
            assert state.outcome is not None
            return self.delay(state.outcome.exception() or Exception(), state.attempt_number + first_attempt_done)

        return AsyncRetrying(
            stop=stop_any(
                stop_after_attempt(max(1, self.cfg.max_attempts - first_attempt_done)), _StopAtDeadline(fits)
            ),
            wait=wait,
            retry=retry_if_exception(self.should_retry),
            sleep=self.sleep,
            reraise=True,
        )
