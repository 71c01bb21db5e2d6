"""The dispatcher embedded in a site's own web application: its slow side and its decision.

:class:`EmbeddedDispatcher` is what both middleware shapes share. It reads the same
configuration and database as ``farm-dispatcher serve``, runs the same
:class:`~dispatcher.farm.Farm` (registry, prober, load reports, rules) in the background, and
decides each request with :meth:`~dispatcher.app.DispatchCore.route` from the latest
snapshot, without I/O. The ASGI middleware runs it on the server's event loop; the WSGI
middleware in a thread of its own (:mod:`dispatcher.embed.wsgi`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dispatcher.app import Answer, DispatchCore, Passed, dispatch_core
from dispatcher.backends.store import SiteStore, SqlSiteStore, open_store
from dispatcher.config import Config, load_config
from dispatcher.errors import InvalidValue, StoreError
from dispatcher.farm import Farm
from dispatcher.redirect import RewriteError, load_rules
from dispatcher.relay import HandoffRelay, has_handoff, split_handoff
from dispatcher.server import STORE_GRACE
from dispatcher.session import SessionError
from dispatcher.snapshot import Snapshot
from dispatcher.throttle import ThrottledLog

log = logging.getLogger("webfarm.embed")
Scope = MutableMapping[str, Any]

#: The first wait before trying a failed start again; it doubles up to :data:`RETRY_MAX`.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
#: The longest site name, path prefix and prefix list accepted (they come from the app's code).
MAX_NAME = 255
MAX_EXEMPT = 100


class EmbeddedDispatcher:
    """The decision for the site named ``site``, from ``config`` (a :class:`Config`, or the
    path of the dispatcher's TOML file, read with the ``FARM_*`` environment).

    :meth:`decide` answers a request (an ASGI ``http`` scope, or the scope the WSGI
    middleware builds) with the dispatcher's :data:`~dispatcher.app.Answer`, a
    :class:`~dispatcher.app.Passed` (the request stays on this site, perhaps rewritten), or
    None: pass it on as it came. None is the answer before the first snapshot exists (the
    database not reached yet: a warning is logged, at most one per 10 s), for a path under
    one of the ``exempt`` prefixes, for this site's own health check (its ``check`` URL:
    the probes must reach the app, not be redirected), and for a hand-off token bound to
    this site (the app's session middleware redeems it). When this site's ``base_url`` has a
    path (``https://example.com/eu``), the rules and placement see the request's path below
    it, as the standalone dispatcher sees the path it appends to the base; requests outside
    it are decided on their whole path.

    :meth:`start` runs the farm in a background task of the running loop: the schema check,
    the first registry read and probe round (tried again, backing off to 30 s, while the
    database fails), then the refresher; ``ready`` is set once the first snapshot exists.
    :meth:`stop` ends it. A database fault after that never fails a request: the last
    snapshot answers. ``state`` says what it is doing.
    """

    def __init__(
        self,
        config: Config | str | Path,
        site: str,
        *,
        exempt: Iterable[str] = (),
        store: SiteStore | None = None,
    ) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        self.site = _site_name(site)
        self.exempt = _exempt(exempt)
        rules = self.config.dispatcher.rules
        if rules is not None:  # a broken rule file fails here, at start-up, not in the background
            load_rules(rules, known_pools=self.config.pools)
        self.core: DispatchCore | None = None
        self.farm: Farm | None = None
        self.store = store
        self.state = "stopped"
        self.ready = threading.Event()
        self._own_store = store is None
        self._task: asyncio.Task[None] | None = None
        self._seen: Snapshot | None = None
        self._own_check: tuple[bytes, bytes] | None = None
        self._prefix = b""
        self._unready = ThrottledLog(log)

    # --- the decision (hot path) ---

    def decide(self, scope: Scope) -> Answer | Passed | None:
        """The answer for one request, a pass with changes, or None (pass it as it came)."""
        core = self.core
        if core is None:
            self._unready.report(
                "unready", "no registry snapshot yet (%s): requests go to the app", self.state
            )
            return None
        path = scope.get("raw_path")
        if path is None:
            path = scope["path"].encode("utf-8", "replace")
        if self.exempt and path.startswith(self.exempt):
            return None
        snapshot = core.farm.snapshot
        if snapshot is not self._seen:
            self._see(snapshot)
        query = scope.get("query_string", b"")
        check = self._own_check
        if check is not None and path == check[0] and query == check[1]:
            return None
        relay = core.relay
        if relay is not None and has_handoff(query) and _bound_to(relay, query, self.site):
            return None  # a sibling site handed the client to this one: the app redeems it
        prefix = self._prefix
        if not prefix or not _under(path, prefix):
            return core.route(scope, self.site)
        below = path[len(prefix) :]  # as the dispatcher sees it: below the base URL
        rest = below or b"/"
        trimmed = {**scope, "raw_path": rest, "path": unquote(rest.decode("latin-1"))}
        result = core.route(trimmed, self.site)
        if not isinstance(result, Passed):
            return result
        target = result.target
        if not below and target[:2] in (b"/", b"/?"):  # "/app" stays "/app", not "/app/"
            target = target[1:]
        return Passed(prefix + target, result.headers)

    def _see(self, snapshot: Snapshot) -> None:
        """Take note of a new snapshot: this site's base path and health check target."""
        status = snapshot.sites.get(self.site)
        base = urlsplit(status.spec.base_url).path if status is not None else ""
        self._prefix = base.rstrip("/").encode("ascii", "replace")
        check = own_check(snapshot, self.site)
        if check is not None and check[0] == b"/" and check != self._own_check:
            log.warning(
                "site %r is checked at its home page: requests for / always reach the app "
                "(give the site a check URL of its own, such as /health)",
                self.site,
            )
        self._own_check, self._seen = check, snapshot

    # --- the slow side ---

    async def start(self) -> None:
        """Start the farm in a background task of the running loop (once; see the class)."""
        if self._task is None or self._task.done():
            self.state = "starting"
            self._task = asyncio.create_task(self._run(), name=f"embedded dispatcher {self.site}")

    async def stop(self) -> None:
        """Stop the refresher and the prober, wait (bounded) for store calls, close the store.

        The last snapshot keeps answering :meth:`decide`; :meth:`start` starts again afresh.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        farm, self.farm = self.farm, None
        if farm is not None and not await farm.stop(timeout=STORE_GRACE):
            log.error("store calls still running after %g s (a hung database?)", STORE_GRACE)
            self.state = "stopped"
            return  # closing the store under them would strand their connections
        store = self.store
        if store is not None and self._own_store:
            self.store = None
            closing = asyncio.ensure_future(asyncio.to_thread(store.close))
            done, _ = await asyncio.wait([closing], timeout=STORE_GRACE)
            if not done:
                log.error("the database did not close within %g s; leaving it", STORE_GRACE)
            elif closing.exception() is not None:
                log.error("the database did not close: %s", closing.exception())
        self.state = "stopped"

    def forget_inherited(self) -> None:
        """In a child process just forked: let go of the parent's farm and database
        connections without closing them (they are the parent's), so that :meth:`start`
        starts afresh here. The inherited snapshot keeps answering until then."""
        self._task, self.farm = None, None
        if self._own_store and isinstance(self.store, SqlSiteStore):
            self.store.engine.dispose(close=False)
            self.store = None
        self.state = "stopped"
        self.ready = threading.Event()
        if self.core is not None:
            self.ready.set()

    async def _run(self) -> None:
        failures = ThrottledLog(log)
        delay = RETRY_FIRST
        while True:
            try:
                farm = await self._start_farm()
                break
            except (StoreError, RewriteError) as exc:
                self.state = f"waiting for the database: {exc}"
                failures.report(
                    type(exc).__name__,
                    "the embedded dispatcher could not start (%s); trying again in %g s",
                    exc,
                    delay,
                )
            except Exception as exc:  # a bug must not end the embedded dispatcher for good
                self.state = f"waiting: unexpected {type(exc).__name__}: {exc}"
                if failures.throttle.hit("unexpected") is not None:
                    log.exception("the embedded dispatcher could not start; again in %g s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
        self.state = "running"
        await farm.run_refresher(self.config.dispatcher.registry_refresh)

    async def _start_farm(self) -> Farm:
        settings = self.config.dispatcher
        if self.store is None:
            self.store = open_store(settings.database_url, timeout=settings.database_timeout)
        await asyncio.to_thread(self.store.check_schema)
        if self.farm is None:
            self.farm = Farm(self.config, self.store)
        await self.farm.start()
        snapshot = self.farm.snapshot
        if self.site not in snapshot.sites:
            log.error(
                "site %r is not in the registry (sites: %s): every request is sent elsewhere",
                self.site,
                ", ".join(sorted(snapshot.sites)) or "none",
            )
        self.core = dispatch_core(self.farm, settings)
        self.ready.set()
        log.info(
            "embedded dispatcher for site %r running: registry revision %d, %d site(s)",
            self.site,
            snapshot.revision,
            len(snapshot.sites),
        )
        return self.farm


def own_check(snapshot: Snapshot, site: str) -> tuple[bytes, bytes] | None:
    """The path and query of ``site``'s health check, when it points into the site itself
    (the probes must reach the app), else None."""
    status = snapshot.sites.get(site)
    if status is None:
        return None
    base, url = urlsplit(status.spec.base_url), urlsplit(status.spec.check_url)
    if (url.scheme, url.netloc.lower()) != (base.scheme, base.netloc.lower()):
        return None
    return (url.path or "/").encode("ascii", "replace"), url.query.encode("ascii", "replace")


def _under(path: bytes, prefix: bytes) -> bool:
    """Whether ``path`` is ``prefix`` or below it (``/app`` holds ``/app/x``, not ``/apps``)."""
    return path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] in (b"", b"/")


def _bound_to(relay: HandoffRelay, query: bytes, site: str) -> bool:
    """Whether the query's hand-off token is a live one bound to ``site`` (not redeemed)."""
    token, _ = split_handoff(query)
    if token is None:
        return False
    try:
        relay.tokens.decode(token, target=site)
    except SessionError:
        return False
    return True


def _site_name(site: object) -> str:
    if not isinstance(site, str) or not 0 < len(site) <= MAX_NAME or not site.isprintable():
        raise InvalidValue("site", f"the name of this site in the registry, got {site!r}")
    return site


def _exempt(prefixes: Iterable[str]) -> tuple[bytes, ...]:
    if isinstance(prefixes, str):
        raise InvalidValue("exempt", "a list of path prefixes, not one string")
    found = tuple(prefixes)
    if len(found) > MAX_EXEMPT:
        raise InvalidValue("exempt", f"at most {MAX_EXEMPT} path prefixes, got {len(found)}")
    for prefix in found:
        if (
            not isinstance(prefix, str)
            or not prefix.startswith("/")
            or len(prefix) > MAX_NAME
            or not prefix.isascii()
            or not prefix.isprintable()
        ):
            raise InvalidValue(
                "exempt", f"path prefixes starting with '/', printable ASCII, got {prefix!r}"
            )
    return tuple(prefix.encode("ascii") for prefix in found)
