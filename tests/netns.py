"""Hosts on one machine: network namespaces joined by veth pairs to a bridge in the
database's namespace, on a private /24 the test picks, removed on exit even when the test
fails. Root only; `unusable()` says why not elsewhere."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from types import TracebackType

TOOLS = ("ip", "unshare")


def unusable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces and veth pairs"
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        return f"needs {', '.join(missing)} (iproute2, util-linux)"
    probe = f"wkprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


class Network:
    """A database namespace (a bridge holding the subnet's .1) and `hosts` host namespaces
    (.11, .12, ...); the test's own namespace gets .2, to push and to watch."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"wk{secrets.token_hex(2)}"
        self.subnet = self._free_subnet()
        self.database = f"{self.tag}db"
        self.hosts = [f"{self.tag}h{number}" for number in range(1, hosts + 1)]
        self.database_address = self.address(1)

    def address(self, last: int) -> str:
        return f"{self.subnet}.{last}"

    def host_address(self, index: int) -> str:
        return self.address(11 + index)

    def __enter__(self) -> Network:
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def _make(self) -> None:
        _run("ip", "netns", "add", self.database)
        _run("ip", "-n", self.database, "link", "set", "lo", "up")
        _run("ip", "-n", self.database, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.database, "addr", "add", f"{self.database_address}/24", "dev", "br0")
        _run("ip", "-n", self.database, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts):
            _run("ip", "netns", "add", host)
            _run("ip", "-n", host, "link", "set", "lo", "up")
            self._wire(host, f"h{index + 1}", self.host_address(index))
        self._wire(None, "t", self.address(2))

    def _wire(self, namespace: str | None, name: str, address: str) -> None:
        """A veth pair: one end in `namespace` (None: the test's) with `address`, the other
        a port of the bridge."""
        inside, port = f"{self.tag}{name}", f"{self.tag}{name}p"
        _run("ip", "link", "add", inside, "type", "veth", "peer", "name", port)
        _run("ip", "link", "set", port, "netns", self.database)
        _run("ip", "-n", self.database, "link", "set", port, "master", "br0")
        _run("ip", "-n", self.database, "link", "set", port, "up")
        where = ["-n", namespace] if namespace else []
        if namespace:
            _run("ip", "link", "set", inside, "netns", namespace)
        _run("ip", *where, "addr", "add", f"{address}/24", "dev", inside)
        _run("ip", *where, "link", "set", inside, "up")

    def command_in(self, namespace: str, hostname: str, command: Sequence[str]) -> list[str]:
        """`command` run in `namespace` under a hostname of its own (a UTS namespace)."""
        return [
            "ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c",
            'hostname "$0" && exec "$@"', hostname, *command,
        ]  # fmt: skip

    def cut(self, index: int, cut: bool = True) -> None:
        """Take a host's port on the bridge down (its packets vanish, as in a partition:
        no error reaches either side until a timeout) or up again."""
        port = f"{self.tag}h{index + 1}p"
        _run("ip", "-n", self.database, "link", "set", port, "down" if cut else "up")

    def remove(self) -> None:
        """Kill what still runs inside, delete the namespaces (their veth ends go with them,
        and so do the test's, whose peers were inside)."""
        for namespace in [*self.hosts, self.database]:
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True
            )
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{self.tag}t"], capture_output=True)

    @staticmethod
    def _free_subnet() -> str:
        """A 10.x.y.0/24 no interface of this machine is on."""
        used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        taken = []
        for word in used.split():
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_interface(word))
        for _ in range(100):
            candidate = ipaddress.ip_network(
                f"10.{random.randint(64, 250)}.{random.randint(1, 250)}.0/24"
            )
            if not any(candidate.overlaps(iface.network) for iface in taken if iface.version == 4):
                return str(candidate.network_address).rsplit(".", 1)[0]
        raise RuntimeError("no free 10.x.y.0/24 on this machine")


class DelayingRelay:
    """A TCP relay in the test's namespace between one host and the database. This
    machine's kernel has no netem qdisc (`tc ... netem` is "unknown"), so a host's link
    delay is made here: while `delayed`, what the host sends is held `ms` ± `jitter`
    milliseconds before it is forwarded (the host's egress, as netem on its link would
    delay it), in order; replies pass at once. Idle, it adds a thread hop."""

    def __init__(self, listen: str, target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server((listen, 0))
        self.port = self._server.getsockname()[1]
        self.delayed = False
        self.ms, self.jitter = 200, 50
        self._sockets: list[socket.socket] = [self._server]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(
                target=self._delayed_pump, args=(client, upstream), daemon=True
            ).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        self._shut(source, sink)

    def _delayed_pump(self, source: socket.socket, sink: socket.socket) -> None:
        held: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        threading.Thread(target=self._release, args=(held, sink), daemon=True).start()
        last = 0.0
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                delay = random.uniform(self.ms - self.jitter, self.ms + self.jitter) / 1000
                last = max(last, time.monotonic() + (delay if self.delayed else 0.0))
                held.put((last, chunk))
        held.put(None)

    def _release(self, held: queue.Queue[tuple[float, bytes] | None], sink: socket.socket) -> None:
        while (item := held.get()) is not None:
            due, chunk = item
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                sink.sendall(chunk)
            except OSError:
                return
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    @staticmethod
    def _shut(source: socket.socket, sink: socket.socket) -> None:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
