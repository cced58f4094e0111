"""The jobs of the browser test: a job that moves one step each time the test opens its
gate (so the page can be watched progressing), a failing job and a daily schedule."""

from __future__ import annotations

import time

from workers import Job, database


class StepJob(Job):
    """Takes `steps` steps; step n waits until the test sets the gate `gate` to n or more."""

    def handle_job(self) -> str:
        steps = int(self.params.get("steps", 3))
        for step in range(1, steps + 1):
            deadline = time.monotonic() + 60
            gate = {"_id": self.params["gate"], "open": {"$gte": step}}
            while database().gates.find_one(gate) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gate {self.params['gate']} never reached step {step}")
                time.sleep(0.05)
            self.progress(step, steps)
            self.log(f"step {step} of {steps} done", level="success" if step == steps else "info")
        return f"{steps} steps"


class ImportOrdersJob(Job):
    """Fails every attempt, with a traceback worth showing."""

    def handle_job(self) -> None:
        raise ConnectionError(f"the shop at {self.params.get('shop', '?')} did not answer")


class DailyReportJob(Job):
    @classmethod
    def setup_cron(cls) -> str:
        return "0 9 * * *"

    def handle_job(self) -> str:
        return "report sent"
