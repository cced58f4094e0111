"""A base for the tests that count the commands a client sends (pymongo's command
monitoring): only `started` matters to them."""

from __future__ import annotations

from typing import TypeVar

from pymongo import monitoring

L = TypeVar("L", bound=monitoring.CommandListener)


class StartedListener(monitoring.CommandListener):
    """Subclasses record what they need in `started`; replies are of no interest."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        raise NotImplementedError

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def registered(listener: L) -> L:
    """`listener`, registered for every client made from now on: a module's fixture makes it
    before any client of that module's tests is made."""
    monitoring.register(listener)
    return listener
