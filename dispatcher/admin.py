"""The admin JSON API, on its own listener, behind bearer tokens.

Every error is JSON: ``{"error": {"code": ..., "message": ..., "field": ...}}`` with a 4xx
status (a 503 when the database is unreachable). Writes are validated before anything is
stored, stored in one transaction, and in force for the next public request.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from email.utils import format_datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dispatcher.admin_input import (
    MAX_CONNECTIONS,
    ApiError,
    explain_headers,
    explain_method,
    explain_remote_addr,
    read_rules,
)
from dispatcher.admin_input import read_json as _json
from dispatcher.app import Receive, Scope, Send
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec, check_whole, parse_site, shown, update_site
from dispatcher.backends.snapshot import SiteStatus
from dispatcher.errors import (
    InvalidValue,
    SiteExists,
    SiteNotFound,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from dispatcher.explain import explain, request_from_url
from dispatcher.farm import Farm
from dispatcher.openapi import openapi_document
from dispatcher.redirect import RewriteError, RuleSyntaxError


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    headers = {"www-authenticate": 'Bearer realm="webfarm"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


class BearerAuth:
    """Plain ASGI middleware: 401 unless ``Authorization: Bearer <one of tokens>``.

    Every token is compared in constant time, and all of them every time, so neither the
    token nor which one matched leaks through timing.
    """

    def __init__(self, app: Any, tokens: Sequence[str]) -> None:
        self.app = app
        self._tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = error_response(401, "unauthorized", "a valid bearer token is required")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            return False
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(given.strip(), token)
        return found


class AdminApi:
    """The routes of the admin API over one :class:`Farm`."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm

    def app(self, tokens: Sequence[str]) -> BearerAuth:
        routes = [
            _route("/api/v1/sites", GET=self.list_sites, POST=self.create_site),
            _route(
                "/api/v1/sites/{name}",
                GET=self.get_site,
                PATCH=self.patch_site,
                DELETE=self.delete_site,
            ),
            _route("/api/v1/sites/{name}/drain", POST=self.drain),
            _route("/api/v1/sites/{name}/undrain", POST=self.undrain),
            _route("/api/v1/sites/{name}/load", PUT=self.put_load),
            _route("/api/v1/status", GET=self.status),
            _route("/api/v1/rules", GET=self.get_rules, PUT=self.put_rules),
            _route("/api/v1/explain", POST=self.explain),
            _route("/api/v1/openapi.json", GET=self.openapi),
        ]
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
        starlette = Starlette(routes=routes, exception_handlers=handlers)
        return BearerAuth(starlette, tokens)

    # --- sites ---

    async def list_sites(self, request: Request) -> Response:
        snapshot = self.farm.snapshot
        return JSONResponse({"sites": [self._site(s) for s in snapshot.sites.values()]})

    async def create_site(self, request: Request) -> Response:
        site = parse_site(await _json(request))
        created = await self.farm.create_site(site)
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
        await self.farm.modify_site(name, lambda site: update_site(site, changes))
        return JSONResponse(self._site_named(name))

    async def delete_site(self, request: Request) -> Response:
        await self.farm.delete_site(request.path_params["name"])
        return Response(status_code=204)

    async def drain(self, request: Request) -> Response:
        return await self._set_drained(request, True)

    async def undrain(self, request: Request) -> Response:
        return await self._set_drained(request, False)

    async def _set_drained(self, request: Request, drained: bool) -> Response:
        name = request.path_params["name"]
        await self.farm.modify_site(name, lambda site: replace(site, drained=drained))
        return JSONResponse(self._site_named(name))

    async def put_load(self, request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict):
            raise InvalidValue("", "a JSON object with load and optional connections")
        unknown = set(body) - {"load", "connections"}
        if unknown:
            raise InvalidValue(sorted(unknown)[0], "no such field (allowed: connections, load)")
        load = body.get("load")
        if isinstance(load, bool) or not isinstance(load, int | float) or not 0 <= load <= 1:
            raise InvalidValue("load", f"a utilisation from 0 to 1, got {shown(load)}")
        connections = body.get("connections")
        if connections is not None:
            connections = check_whole(connections, "connections", 0, MAX_CONNECTIONS)
        report = await self.farm.report_load(request.path_params["name"], load, connections)
        return JSONResponse(
            {
                "site": report.site,
                "load": float(report.load),
                "connections": report.connections,
                "reported_at": report.reported_at.isoformat(),
            }
        )

    # --- status ---

    async def status(self, request: Request) -> Response:
        snapshot = self.farm.snapshot
        pools = {
            name: {
                "policy": pool.config.policy,
                "fallback": pool.config.fallback,
                "redirect_status": pool.status,
                "eligible": [c.name for c in pool.candidates],
            }
            for name, pool in snapshot.pools.items()
        }
        return JSONResponse(
            {
                "revision": snapshot.revision,
                "default_pool": snapshot.default_pool.config.name,
                "pools": pools,
                "sites": [self._site(s) for s in snapshot.sites.values()],
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
        program = await self.farm.set_rules(text)
        return JSONResponse({"rules": program.rule_count, "enabled": program.enabled})

    async def explain(self, request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict):
            raise InvalidValue(
                "", "a JSON object with url, and optional method, remote_addr, headers"
            )
        unknown = set(body) - {"url", "method", "remote_addr", "headers"}
        if unknown:
            raise InvalidValue(sorted(unknown)[0], "no such field")
        for key in ("url", "method", "remote_addr"):
            if key in body and not isinstance(body[key], str):
                raise InvalidValue(key, f"a string, got {shown(body[key])}")
        if "url" not in body:
            raise InvalidValue("url", "the absolute URL the client asks for")
        client_request = request_from_url(
            body["url"],
            method=explain_method(body.get("method", "GET")),
            remote_addr=explain_remote_addr(body.get("remote_addr", "127.0.0.1")),
            headers=explain_headers(body.get("headers", {})).items(),
        )
        return JSONResponse(explain(self.farm.snapshot, client_request).as_dict())

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
            status = SiteStatus(spec, Health("unknown", None), None)
        return self._site(status)

    def _site(self, status: SiteStatus) -> dict[str, Any]:
        now = time.monotonic()
        last = status.health.last
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
            "redirects": self.farm.redirects.get(status.spec.name, 0),
        }


Endpoint = Callable[[Request], Awaitable[Response]]


def _route(path: str, **methods: Endpoint) -> Route:
    """One route per path; the HTTP method picks the handler (405 with Allow otherwise)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await methods[method](request)

    return Route(path, endpoint, methods=list(methods))


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
