"""Dramatiq on Redis with its default middleware: the actor the bench's workers run."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import redis_tasks

dramatiq.set_broker(RedisBroker(url=redis_tasks.URL))  # type: ignore[no-untyped-call]
noop = dramatiq.actor(actor_name="noop", max_retries=0)(redis_tasks.noop)
