"""``GET /livez`` and ``GET /readyz``: is the daemon alive, and should it get traffic?

For what stands in front (a layer-4 switch, HAProxy, keepalived, Kubernetes) and what runs
it (systemd's watchdog). No token, no database call, nothing slow: each answer is a pure
function (:func:`dispatcher_liveness`, :func:`dispatcher_readiness`) of what the running
daemon last saw, so a check every second costs next to nothing. The status is 200 when
every condition holds, else 503; the body (JSON) names each condition::

    {"status": "ok", "checks": {"database": {"ok": true, "detail": "answered 0.4 s ago
     (bound 10 s)"}, ...}, "snapshot_age": 0.4}

:class:`HealthRoutes` is plain ASGI middleware that answers the two paths (GET and HEAD;
another method is a 405) and passes every other request on, so it sits in front of the
admin API's token check. farmnode's status listener answers the same paths with its own
conditions (:mod:`farmnode.vitals`) and :func:`send_verdict`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dispatcher.asgi import Receive, Scope, Send

LIVEZ: Final = "/livez"
READYZ: Final = "/readyz"
#: A worker process that has sent nothing for this long is not live (it reports twice a
#: second; the control process replaces one silent for 15 s).
WORKER_SILENCE: Final = 5.0
#: The database must have answered within ``registry_refresh`` times this.
DATABASE_BOUND_FACTOR: Final = 10.0


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Conditions that must all hold, and facts shown beside them."""

    conditions: tuple[Condition, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.conditions)

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def document(self) -> dict[str, Any]:
        checks = {c.name: {"ok": c.ok, "detail": c.detail} for c in self.conditions}
        return {"status": "ok" if self.ok else "failing", "checks": checks, **self.facts}


class WorkerVital(Protocol):
    """What liveness reads of a worker process (:class:`dispatcher.control.WorkerView`)."""

    @property
    def index(self) -> int: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def ready(self) -> bool: ...
    @property
    def silence(self) -> float | None: ...


def dispatcher_liveness(*, control: str | None, workers: Sequence[WorkerVital] | None) -> Verdict:
    """The control process runs (``control`` is ``None``, else what is wrong with it: a
    background task that died) and, with worker processes, every one of them is ready
    and was heard from within :data:`WORKER_SILENCE` seconds."""
    conditions = [Condition("control", control is None, control or "running")]
    if workers is not None:
        failing = [_worker_trouble(w) for w in workers]
        bad = [trouble for trouble in failing if trouble]
        detail = "; ".join(bad) if bad else f"{len(workers)} worker(s) running"
        conditions.append(Condition("workers", not bad, detail))
    return Verdict(tuple(conditions))


def _worker_trouble(worker: WorkerVital) -> str:
    if worker.pid is None or not worker.ready:
        return f"worker {worker.index} is not running"
    silence = worker.silence
    if silence is None or silence > WORKER_SILENCE:
        heard = "never" if silence is None else f"{silence:.1f} s ago"
        return f"worker {worker.index} (pid {worker.pid}) last heard {heard}"
    return ""


@dataclass(frozen=True, slots=True)
class Readiness:
    """What the running dispatcher last saw (monotonic seconds; ``None``: never)."""

    loaded: bool
    probed: bool
    listening: bool
    stopping: bool
    database_answered: float | None
    refreshed: float | None
    registry_refresh: float
    now: float


def dispatcher_readiness(seen: Readiness) -> Verdict:
    """Ready when the registry was read (a snapshot exists), the first probe round ran, the
    public listener is open (not stopping), and the database answered within
    ``registry_refresh`` x :data:`DATABASE_BOUND_FACTOR` seconds."""
    bound = seen.registry_refresh * DATABASE_BOUND_FACTOR
    answered = _age(seen.database_answered, seen.now)
    if answered is None:
        database = Condition("database", False, "has not answered yet")
    else:
        within = answered <= bound
        detail = (
            f"answered {answered:.1f} s ago (bound {bound:g} s)"
            if within
            else f"last answered {answered:.1f} s ago, beyond the bound of {bound:g} s"
        )
        database = Condition("database", within, detail)
    listening = Condition(
        "listening",
        seen.listening and not seen.stopping,
        "stopping" if seen.stopping else ("open" if seen.listening else "not open yet"),
    )
    conditions = (
        Condition("snapshot", seen.loaded, "registry loaded" if seen.loaded else "not loaded yet"),
        Condition("probes", seen.probed, "first round done" if seen.probed else "not run yet"),
        database,
        listening,
    )
    return Verdict(conditions, {"snapshot_age": _rounded(_age(seen.refreshed, seen.now))})


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, now - at)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- serving ---------------------------------------------------------------------------


async def send_verdict(send: Send, verdict: Verdict, *, head: bool) -> None:
    """The verdict as the answer: 200 or 503, JSON, never cached."""
    await send_json(send, verdict.status, verdict.document(), head=head)


async def send_json(
    send: Send,
    status: int,
    body: Mapping[str, Any],
    *,
    head: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else data})


class HealthRoutes:
    """Answers ``/livez`` and ``/readyz`` from ``live()`` and ``ready()``; every other
    request goes to ``app``. A method other than GET or HEAD on them is a JSON 405 in the
    admin API's error shape."""

    def __init__(self, app: Any, live: Callable[[], Verdict], ready: Callable[[], Verdict]) -> None:
        self.app = app
        self._answers = {LIVEZ: live, READYZ: ready}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._answers.get(scope["path"]) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method in ("GET", "HEAD"):
            await send_verdict(send, answer(), head=method == "HEAD")
            return
        message = f"{method} {scope['path']}: only GET and HEAD are allowed"
        body = {"error": {"code": "method_not_allowed", "message": message, "field": None}}
        await send_json(send, 405, body, head=False, extra=[(b"allow", b"GET, HEAD")])


__all__ = [
    "LIVEZ",
    "READYZ",
    "Condition",
    "HealthRoutes",
    "Readiness",
    "Verdict",
    "dispatcher_liveness",
    "dispatcher_readiness",
    "send_json",
    "send_verdict",
]
