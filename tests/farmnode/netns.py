"""Network namespaces for tests: small labs of namespaces, veth pairs and bridges.

A :class:`Lab` is a context manager. Everything it makes is named for this process and
this lab (``wf<pid>x<n>-<role>``), so parallel runs never collide, and it is all removed on
exit, also when the test failed: processes started in the lab are killed, then its
namespaces are deleted (which deletes their veths and bridges). Namespaces that a killed
run left behind (their process is gone) are swept when the next lab opens.

Addresses must lie in ``10.213.0.0/16``: test traffic never leaves the lab.

    with Lab() as lab:
        client, switch = lab.namespace("client"), lab.namespace("switch")
        lab.link(client, "10.213.0.2/24", switch, "10.213.0.1/24")
        switch.sysctl("net.ipv4.ip_forward", "1")
        with client.connect(("10.213.0.1", 80)) as sock: ...

Sockets made with :meth:`Namespace.new_socket` belong to the namespace (a helper thread enters
it with ``setns(2)`` to create them) and can then be used from any thread of the test, so
clients and servers can run in the test process itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

LAB_NETWORK = ipaddress.IPv4Network("10.213.0.0/16")
PREFIX = "wf"
NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_COUNTER = itertools.count(1)
T = TypeVar("T")


def unavailable_reason() -> str | None:
    """Why labs cannot be built here (not root, no ``ip``), or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, or in CI)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def lab_address(cidr: str) -> ipaddress.IPv4Interface:
    """``cidr`` (``10.213.1.2/24`` or a bare address) checked to lie inside the lab network."""
    interface = ipaddress.IPv4Interface(cidr)
    if interface.ip not in LAB_NETWORK:
        raise ValueError(f"{cidr}: lab addresses must lie in {LAB_NETWORK}")
    return interface


def _run(argv: Sequence[str], *, timeout: float = 30.0, check: bool = True) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


class Namespace:
    """One network namespace of a lab; ``name`` is its ``ip netns`` name."""

    def __init__(self, lab: Lab, name: str, role: str) -> None:
        self.lab = lab
        self.name = name
        self.role = role

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run a command inside the namespace and return its standard output."""
        return _run(self.exec_argv(argv), timeout=timeout, check=check)

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS``."""
        return _run(["ip", "-n", self.name, *args])

    def sysctl(self, key: str, value: str) -> None:
        """Set a per-namespace sysctl (``net.ipv4.ip_forward``...)."""
        path = "/proc/sys/" + key.replace(".", "/")
        self.run("sh", "-c", f'echo "$1" > "{path}"', "-", value)

    def add_address(self, device: str, cidr: str) -> None:
        self.ip("addr", "add", str(lab_address(cidr)), "dev", device)

    def route(self, destination: str, via: str) -> None:
        """Add a route (``default`` or a lab network) through a lab address."""
        if destination != "default":
            network = ipaddress.IPv4Network(destination, strict=False)
            if not network.subnet_of(LAB_NETWORK):
                raise ValueError(f"{destination}: lab routes must lie in {LAB_NETWORK}")
        self.ip("route", "add", destination, "via", str(lab_address(via).ip))

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process inside the namespace; the lab kills it on exit at the latest."""
        process: subprocess.Popen[str] = subprocess.Popen(
            self.exec_argv(argv), text=True, start_new_session=True, **kwargs
        )
        self.lab.processes.append(process)
        return process

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a helper thread that has entered this namespace; return its result.

        What ``fn`` creates (sockets) stays in the namespace when the thread ends.
        """
        box: list[T] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                fd = os.open(f"{NETNS_DIR}/{self.name}", os.O_RDONLY)
                try:
                    if _libc().setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                    box.append(fn())
                finally:
                    os.close(fd)
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=target, name=f"netns-{self.role}")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return box[0]

    def new_socket(
        self, kind: socket.SocketKind = socket.SOCK_STREAM, family: int = socket.AF_INET
    ) -> socket.socket:
        """A new socket inside this namespace."""
        return self.call(lambda: socket.socket(family, kind))

    def connect(self, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
        """A TCP connection from this namespace to ``address`` (timeout applies to the socket)."""
        sock = self.new_socket()
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(
        self, address: tuple[str, int], kind: socket.SocketKind = socket.SOCK_STREAM
    ) -> socket.socket:
        """A bound socket in this namespace, listening when it is TCP."""
        sock = self.new_socket(kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        return sock


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


class Lab:
    """Namespaces, links and bridges for one test, all removed by :meth:`close`."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}x{next(_COUNTER)}"
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Lab:
        sweep_stale()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except RuntimeError:
            if exc is None:  # do not hide the test's own failure behind this one
                raise

    def namespace(self, role: str) -> Namespace:
        """A new namespace ``TAG-role`` with its loopback up."""
        ns = Namespace(self, f"{self.tag}-{role}", role)
        _run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(
        self,
        a: Namespace,
        a_cidr: str | None,
        b: Namespace,
        b_cidr: str | None,
        *,
        a_dev: str = "",
        b_dev: str = "",
    ) -> tuple[str, str]:
        """A veth pair between two namespaces, up, with optional addresses.

        Device names default to ``v-<other role>`` (at most 15 characters); returns them.
        """
        a_dev = a_dev or f"v-{b.role}"[:15]
        b_dev = b_dev or f"v-{a.role}"[:15]
        veth = ["type", "veth", "peer", "name", b_dev, "netns", b.name]
        _run(["ip", "link", "add", a_dev, "netns", a.name, *veth])
        for ns, dev, cidr in ((a, a_dev, a_cidr), (b, b_dev, b_cidr)):
            if cidr is not None:
                ns.add_address(dev, cidr)
            ns.ip("link", "set", dev, "up")
        return a_dev, b_dev

    def bridge(self, ns: Namespace, name: str = "br0", cidr: str | None = None) -> str:
        """A bridge in ``ns``, up, with an optional address; returns its name.

        It behaves as a plain Ethernet switch: where ``br_netfilter`` is loaded, ``ns`` is
        told not to pass bridged frames through netfilter (``bridge-nf-call-*tables`` 0),
        so a node's rules see only what it routes, as with a physical switch.
        """
        ns.run(
            "sh",
            "-c",
            'for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e "$f" ] && echo 0 > "$f"; done;'
            " true",
        )
        ns.ip("link", "add", name, "type", "bridge")
        if cidr is not None:
            ns.add_address(name, cidr)
        ns.ip("link", "set", name, "up")
        return name

    def attach(
        self, ns: Namespace, cidr: str | None, bridge_ns: Namespace, bridge: str = "br0"
    ) -> str:
        """Plug ``ns`` into ``bridge`` (in ``bridge_ns``) with a veth; returns ``ns``'s device."""
        dev, port = self.link(ns, cidr, bridge_ns, None, b_dev=f"p-{ns.role}"[:15])
        bridge_ns.ip("link", "set", port, "master", bridge)
        return dev

    def close(self) -> None:
        """Kill the lab's processes, then delete its namespaces. Safe to call twice.

        Raises :class:`RuntimeError` naming any namespace that could not be deleted.
        """
        for process in self.processes:
            _kill(process)
        self.processes.clear()
        left = [ns.name for ns in reversed(self.namespaces) if not _delete_netns(ns.name)]
        self.namespaces.clear()
        if left:
            raise RuntimeError(f"network namespaces left behind: {', '.join(left)}")


def _delete_netns(name: str) -> bool:
    """``ip netns del NAME``, tried twice; ``True`` once the name is gone."""
    for attempt in range(2):
        _run(["ip", "netns", "del", name], check=False)
        if not os.path.exists(f"{NETNS_DIR}/{name}"):
            return True
        if attempt == 0:
            time.sleep(0.2)
    return False


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def sweep_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone; returns their names."""
    if not os.path.isdir(NETNS_DIR):
        return []
    removed = []
    for name in os.listdir(NETNS_DIR):
        pid = _owner(name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        if _delete_netns(name):
            removed.append(name)
    return removed


def _owner(name: str) -> int | None:
    if not name.startswith(PREFIX):
        return None
    digits, sep, _ = name[len(PREFIX) :].partition("x")
    return int(digits) if sep and digits.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
