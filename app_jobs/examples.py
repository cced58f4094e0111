"""Jobs that show retries and after_job."""

from __future__ import annotations

from workers import Job


class FlakyJob(Job):
    """Fails its first `failures` attempts, then succeeds: shows a retry with backoff."""

    def handle_job(self) -> str:
        assert self.attempt is not None
        if self.attempt.number <= self.params.get("failures", 1):
            raise ConnectionError(f"upstream timed out (attempt {self.attempt.number})")
        return f"succeeded on attempt {self.attempt.number}"

    def after_job(self, error: BaseException | None) -> None:
        assert self.attempt is not None
        outcome = "succeeded" if error is None else f"failed ({error}), will be retried"
        print(f"FlakyJob attempt {self.attempt.number}: {outcome}", flush=True)


class AlwaysFailsJob(Job):
    """Never succeeds: ends `failed` with the error and traceback once out of retries."""

    def handle_job(self) -> None:
        raise RuntimeError(f"cannot process {self.params.get('item')!r}")

    def after_job(self, error: BaseException | None) -> None:
        print(f"AlwaysFailsJob: after_job saw {error!r}", flush=True)
