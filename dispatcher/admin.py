"""The admin JSON API, on its own listener, behind bearer tokens.

Every error is JSON: ``{"error": {"code": ..., "message": ..., "field": ...}}`` with a 4xx
status (a 503 when the database is unreachable). Writes are validated before anything is
stored, stored in one transaction, and in force for the next public request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dispatcher import audit
from dispatcher.access import AdminToken, authenticate, bearer, decide, parse_tokens
from dispatcher.admin_input import (
    MAX_CONNECTIONS,
    ApiError,
    explain_headers,
    explain_method,
    explain_remote_addr,
    read_rules,
    rtt_entries,
)
from dispatcher.admin_input import read_json as _json
from dispatcher.asgi import Receive, Scope, Send
from dispatcher.audit_input import audit_query
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec, check_whole, parse_site, shown, update_site
from dispatcher.backends.snapshot import SiteStatus
from dispatcher.clientaddr import trusted_proxies
from dispatcher.dns.explain import explain_dns
from dispatcher.errors import (
    InvalidValue,
    SiteExists,
    SiteNotFound,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from dispatcher.explain import client_subnet, explain, request_from_url
from dispatcher.farm import Farm
from dispatcher.openapi import openapi_document
from dispatcher.redirect import RewriteError, RuleSyntaxError

if TYPE_CHECKING:  # control imports server, which imports this module
    from dispatcher.control import WorkerView

#: A record type in explain's DNS variant (a mnemonic, or TYPE and a number).
DNS_TYPE_RE = re.compile(r"[A-Za-z0-9]{1,16}")
MAX_SUBNET = 64


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    headers = {"www-authenticate": 'Bearer realm="webfarm"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


class BearerAuth:
    """Plain ASGI middleware: 401 unless ``Authorization: Bearer <one of tokens>``.

    Every token is compared in constant time, and all of them every time, so neither the
    token nor which one matched leaks through timing. The token found is left in the scope
    (``scope["webfarm.token"]``) for the routes' authorization and the audit log. Plain
    strings are admin tokens (``token-1``, ...), as in the configuration.
    """

    def __init__(self, app: Any, tokens: Sequence[AdminToken | str]) -> None:
        self.app = app
        named = parse_tokens([t for t in tokens if isinstance(t, str)], "tokens")
        given = [t for t in tokens if isinstance(t, AdminToken)] + list(named)
        self._tokens = [(t.token.encode(), t) for t in given]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            credentials = bearer(scope["headers"])
            token = None if credentials is None else authenticate(self._tokens, credentials)
            if token is None:
                response = error_response(401, "unauthorized", "a valid bearer token is required")
                await response(scope, receive, send)
                return
            scope[audit.TOKEN_KEY] = token
        await self.app(scope, receive, send)


class AdminApi:
    """The routes of the admin API over one :class:`Farm`."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm

    def routes(self) -> list[Route]:
        """Every route, each method with the action a token needs (:mod:`dispatcher.access`)."""
        return [
            _route(
                "/api/v1/sites", GET=(self.list_sites, "read"), POST=(self.create_site, "create")
            ),
            _route(
                "/api/v1/sites/{name}",
                GET=(self.get_site, "read"),
                PATCH=(self.patch_site, "modify"),
                DELETE=(self.delete_site, "delete"),
            ),
            _route("/api/v1/sites/{name}/drain", POST=(self.drain, "drain")),
            _route("/api/v1/sites/{name}/undrain", POST=(self.undrain, "undrain")),
            _route("/api/v1/sites/{name}/load", PUT=(self.put_load, "load")),
            _route("/api/v1/status", GET=(self.status, "read")),
            _route("/api/v1/rules", GET=(self.get_rules, "read"), PUT=(self.put_rules, "rules")),
            _route("/api/v1/explain", POST=(self.explain, "explain")),
            _route("/api/v1/audit", GET=(self.audit_trail, "read")),
            _route("/api/v1/openapi.json", GET=(self.openapi, "read")),
        ]

    def app(self, tokens: Sequence[AdminToken | str]) -> audit.AccessLog:
        """The admin ASGI app: access log, then bearer tokens, then the routes."""
        handled = (
            ApiError,
            HTTPException,
            InvalidValue,
            SiteNotFound,
            SiteExists,
            StoreError,
            RuleSyntaxError,
            RewriteError,
        )
        handlers: dict[Any, Any] = dict.fromkeys(handled, _error)
        handlers[Exception] = _internal_error
        starlette = Starlette(routes=self.routes(), exception_handlers=handlers)
        return audit.AccessLog(BearerAuth(starlette, tokens))

    # --- sites ---

    async def list_sites(self, request: Request) -> Response:
        snapshot = self.farm.snapshot
        return JSONResponse({"sites": [self._site(s) for s in snapshot.sites.values()]})

    async def create_site(self, request: Request) -> Response:
        site = parse_site(await _json(request))
        created = await self.farm.create_site(site, audit.site_hook(request.scope, "created"))
        audit.site_created(request.scope, created)
        return JSONResponse(
            self._site_stored(created),
            status_code=201,
            headers={"location": f"/api/v1/sites/{created.name}"},
        )

    async def get_site(self, request: Request) -> Response:
        return JSONResponse(self._site_named(request.path_params["name"]))

    async def patch_site(self, request: Request) -> Response:
        changes = await _json(request)
        name = request.path_params["name"]
        change = audit.Recorded(lambda site: update_site(site, changes))
        hook = audit.site_hook(request.scope, "modified")
        after = await self.farm.modify_site(name, change, hook)
        audit.site_modified(request.scope, "modified", change.before, after)
        return JSONResponse(self._site_named(name))

    async def delete_site(self, request: Request) -> Response:
        name = request.path_params["name"]
        before = self.farm.snapshot.sites.get(name)
        await self.farm.delete_site(name, audit.site_hook(request.scope, "deleted"))
        audit.site_deleted(request.scope, name, before.spec if before else None)
        return Response(status_code=204)

    async def drain(self, request: Request) -> Response:
        return await self._set_drained(request, True)

    async def undrain(self, request: Request) -> Response:
        return await self._set_drained(request, False)

    async def _set_drained(self, request: Request, drained: bool) -> Response:
        name = request.path_params["name"]
        change = audit.Recorded(lambda site: replace(site, drained=drained))
        action = "drained" if drained else "undrained"
        after = await self.farm.modify_site(name, change, audit.site_hook(request.scope, action))
        audit.site_modified(request.scope, action, change.before, after)
        return JSONResponse(self._site_named(name))

    async def put_load(self, request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict):
            raise InvalidValue("", "a JSON object with load, and optional connections and rtt")
        unknown = set(body) - {"load", "connections", "rtt"}
        if unknown:
            raise InvalidValue(
                sorted(unknown)[0], "no such field (allowed: connections, load, rtt)"
            )
        load = body.get("load")
        if isinstance(load, bool) or not isinstance(load, int | float) or not 0 <= load <= 1:
            raise InvalidValue("load", f"a utilisation from 0 to 1, got {shown(load)}")
        connections = body.get("connections")
        if connections is not None:
            connections = check_whole(connections, "connections", 0, MAX_CONNECTIONS)
        rtt = rtt_entries(body["rtt"]) if "rtt" in body else None
        name = request.path_params["name"]
        report = await self.farm.report_load(name, load, connections, rtt)
        audit.load_reported(request.scope, report.site, report.load, report.connections)
        answer: dict[str, Any] = {
            "site": report.site,
            "load": float(report.load),
            "connections": report.connections,
            "reported_at": report.reported_at.isoformat(),
        }
        if rtt is not None:
            answer["rtt_networks"] = len(rtt)
        return JSONResponse(answer)

    # --- status ---

    async def status(self, request: Request) -> Response:
        snapshot = self.farm.snapshot
        pools = {
            name: {
                "policy": pool.config.policy,
                "fallback": pool.config.fallback,
                "redirect_status": pool.status,
                "eligible": [c.name for c in pool.candidates],
                "all_down": pool.config.all_down,
                "failing_open": pool.failing_open,
            }
            for name, pool in snapshot.pools.items()
        }
        views = self.farm.worker_views
        workers = None if views is None else [_worker(view) for view in views()]
        return JSONResponse(
            {
                "revision": snapshot.revision,
                "default_pool": snapshot.default_pool.config.name,
                "pools": pools,
                "sites": [self._site(s) for s in snapshot.sites.values()],
                "late_probe_results": self.farm.prober.late_results,
                "workers": workers,
                "dns": dict(self.farm.dns.totals().counts),
            }
        )

    # --- rewrite rules ---

    async def get_rules(self, request: Request) -> Response:
        stored = await self.farm.current_rules()
        headers = {"x-rules-origin": stored.origin if stored else "none"}
        if stored is not None:
            headers["last-modified"] = format_datetime(stored.updated_at, usegmt=True)
        text = stored.text if stored else ""
        return PlainTextResponse(text, headers=headers)

    async def put_rules(self, request: Request) -> Response:
        body = await read_rules(request)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "invalid_rules", f"the rules are not UTF-8: {exc}") from None
        rules = self.farm.snapshot.rules
        program = await self.farm.set_rules(text, audit.who(request.scope))
        before = (rules.source, rules.filename) if rules is not None else None
        audit.rules_replaced(request.scope, before, text, program.rule_count)
        return JSONResponse({"rules": program.rule_count, "enabled": program.enabled})

    async def audit_trail(self, request: Request) -> Response:
        query = audit_query(request.query_params.multi_items())
        records = await self.farm.audit_records(query)
        full = len(records) == query.limit
        return JSONResponse(
            {
                "records": [r.as_dict() for r in records],
                "next": str(records[-1].id) if full and records else None,
            }
        )

    async def explain(self, request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, dict) and "dns" in body:
            return JSONResponse(self._explain_dns(body))
        if not isinstance(body, dict):
            raise InvalidValue(
                "", "a JSON object with url, and optional method, remote_addr, subnet, headers"
            )
        unknown = set(body) - {"url", "method", "remote_addr", "subnet", "headers"}
        if unknown:
            raise InvalidValue(sorted(unknown)[0], "no such field")
        for key in ("url", "method", "remote_addr", "subnet"):
            if key in body and not isinstance(body[key], str):
                raise InvalidValue(key, f"a string, got {shown(body[key])}")
        if "url" not in body:
            raise InvalidValue("url", "the absolute URL the client asks for")
        settings = self.farm.config.dispatcher
        client_request = request_from_url(
            body["url"],
            method=explain_method(body.get("method", "GET")),
            remote_addr=explain_remote_addr(body.get("remote_addr", "127.0.0.1")),
            headers=explain_headers(body.get("headers", {})).items(),
            trusted=trusted_proxies(settings.trusted_proxies),
            forwarded_header=settings.forwarded_header,
        )
        subnet = client_subnet(body.get("subnet", ""))
        return JSONResponse(explain(self.farm.snapshot, client_request, subnet=subnet).as_dict())

    def _explain_dns(self, body: dict[str, Any]) -> dict[str, Any]:
        """The DNS variant: ``{"dns": {"name", "type", "resolver", "subnet"}}``."""
        if set(body) != {"dns"}:
            raise InvalidValue(sorted(set(body) - {"dns"})[0], "no such field beside dns")
        question = body["dns"]
        if not isinstance(question, dict):
            raise InvalidValue("dns", "an object with name, and optional type, resolver, subnet")
        unknown = set(question) - {"name", "type", "resolver", "subnet"}
        if unknown:
            raise InvalidValue(f"dns.{sorted(unknown)[0]}", "no such field")
        for key in ("name", "type", "resolver", "subnet"):
            if key in question and not isinstance(question[key], str):
                raise InvalidValue(f"dns.{key}", f"a string, got {shown(question[key])}")
        if "name" not in question:
            raise InvalidValue("dns.name", "the name asked for")
        rdtype = question.get("type", "A")
        if not DNS_TYPE_RE.fullmatch(rdtype):
            raise InvalidValue("dns.type", f"a record type such as A or AAAA, got {shown(rdtype)}")
        subnet = question.get("subnet")
        if subnet is not None and len(subnet) > MAX_SUBNET:
            raise InvalidValue("dns.subnet", f"at most {MAX_SUBNET} characters")
        farm = self.farm
        try:
            explained = explain_dns(
                farm.snapshot,
                farm.config,
                question["name"],
                rdtype,
                resolver=question.get("resolver", "127.0.0.1"),
                subnet=subnet,
                tracker=farm.dns_changes,
            )
        except InvalidValue as exc:
            raise InvalidValue(f"dns.{exc.field}", exc.message) from None
        return explained.as_dict()

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.farm.config.pools))

    # --- views ---

    def _site_named(self, name: str) -> dict[str, Any]:
        status = self.farm.snapshot.sites.get(name)
        if status is None:
            raise SiteNotFound(name)
        return self._site(status)

    def _site_stored(self, spec: SiteSpec) -> dict[str, Any]:
        """A site just written: as the snapshot shows it, or (when the refresh after the
        write failed) as stored, with its health not known yet."""
        status = self.farm.snapshot.sites.get(spec.name)
        if status is None or status.spec != spec:
            return self._site(SiteStatus(spec, Health("unknown", None), None), probed=False)
        return self._site(status)

    def _site(self, status: SiteStatus, *, probed: bool = True) -> dict[str, Any]:
        """A site for the API; its last probe (if ``probed``) is the prober's latest, which
        the snapshot does not hold (it is not rebuilt for every probe)."""
        now = time.monotonic()
        last = self.farm.last_probe(status.spec.name) if probed else None
        load = status.load
        return {
            **status.spec.as_dict(),
            "health": status.health.state,
            "eligible": status.eligible,
            "last_probe": None
            if last is None
            else {
                "ok": last.ok,
                "detail": last.detail,
                "at": last.wall.isoformat(),
                "age": round(now - last.at, 3),
                "duration": round(last.duration, 4),
            },
            "load": None
            if load is None
            else {
                "load": load.report.load,
                "connections": load.report.connections,
                "reported_at": load.report.reported_at.isoformat(),
                "age": round(now - load.received, 3),
            },
            "redirects": self.farm.redirects.get(status.spec.name),
        }


Endpoint = Callable[[Request], Awaitable[Response]]


def _route(path: str, **methods: tuple[Endpoint, str]) -> Route:
    """One route per path; the HTTP method picks the handler (405 with Allow otherwise)
    and the action the request's token must be allowed (403 otherwise)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler, action = methods[method]
        await _authorize(request, action)
        return await handler(request)

    return Route(path, endpoint, methods=list(methods))


async def _authorize(request: Request, action: str) -> None:
    """Raise a 403 :class:`ApiError` unless the request's token may do ``action``.

    An operator's ``PATCH`` is read first: with only ``weight``/``drained`` it is allowed.
    """
    token = request.scope.get(audit.TOKEN_KEY)
    if not isinstance(token, AdminToken):  # the app without BearerAuth in front
        raise ApiError(401, "unauthorized", "a valid bearer token is required")
    fields = None
    if action == "modify" and token.role == "operator":
        body = await _json(request)
        fields = frozenset(body) if isinstance(body, dict) else None
    decision = decide(token, action, request.path_params.get("name"), fields)
    if not decision.allowed:
        raise ApiError(403, "forbidden", decision.reason)


async def _error(request: Request, exc: Exception) -> Response:
    """The one exception handler: every error the API raises becomes a JSON error."""
    status, code, message, field = _classify(exc)
    response = error_response(status, code, message, field)
    if isinstance(exc, HTTPException):
        response.headers.update(exc.headers or {})
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: still a JSON answer; the exception itself goes to the log."""
    return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the log")


def _classify(exc: Exception) -> tuple[int, str, str, str | None]:  # noqa: PLR0911
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.field
    if isinstance(exc, InvalidValue):
        return 422, "invalid", exc.message, exc.field or None
    if isinstance(exc, SiteNotFound):
        return 404, "not_found", str(exc), "name"
    if isinstance(exc, SiteExists):
        return 409, "conflict", str(exc), "name"
    if isinstance(exc, RuleSyntaxError):
        return 400, "invalid_rules", str(exc), f"line {exc.line}"
    if isinstance(exc, RewriteError):  # a map file that cannot be used, say
        return 400, "invalid_rules", str(exc), None
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return exc.status_code, code, str(exc.detail), None
    if isinstance(exc, StoreRejected):
        return 422, "rejected", str(exc), None
    if isinstance(exc, StoreUnavailable):
        return 503, "store_unavailable", str(exc), None
    return 503, "store_error", str(exc), None


def _worker(view: WorkerView) -> dict[str, Any]:
    """One worker process in the status: which generation of state it holds, restarts."""
    return {
        "index": view.index,
        "pid": view.pid,
        "ready": view.ready,
        "generation": view.generation,
        "restarts": view.restarts,
    }
