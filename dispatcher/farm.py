"""The dispatcher's live state: the registry, health and load, folded into snapshots.

:class:`Farm` owns the slow side. It reads and writes the store (in worker threads),
drives the prober, takes load reports, and after every change swaps in a new
:class:`~dispatcher.snapshot.Snapshot` for the hot path to read. When the hot path
runs in worker processes, ``on_change`` is told of every change they must see, and
:meth:`Farm.worker_state` is what is shipped to them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dispatcher.audit import NO_TOKEN, full_digest, rules_hook
from dispatcher.backends.auditstore import AuditHook, AuditQuery, AuditRecord
from dispatcher.backends.health import Health, Prober, ProbeResult, State, Target
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.snapshot import Load
from dispatcher.backends.store import LoadReport, SiteStore, StoredRules
from dispatcher.config import Config, check_not_self
from dispatcher.counts import RedirectCounts
from dispatcher.dns.tally import DnsTotals
from dispatcher.dns.ttl import ChangeTracker
from dispatcher.errors import InvalidValue, StoreError, StoreUnavailable
from dispatcher.placement.pool import Where
from dispatcher.placement.rtt import (
    EMPTY_VIEW,
    RTT_REBUILD_EVERY,
    LearnedRtt,
    RttEntry,
    RttReport,
    build_view,
)
from dispatcher.redirect import RewriteError, RewriteProgram, compile_rules, load_rules
from dispatcher.snapshot import Snapshot, build_snapshot, locator_for
from dispatcher.throttle import ThrottledLog
from dispatcher.wire import RulesText, WorkerState, for_workers

if TYPE_CHECKING:
    from dispatcher.control import WorkerView

log = logging.getLogger("webfarm.farm")
T = TypeVar("T")
_STATE_ONLY: Mapping[State, Health] = {
    state: Health(state, None) for state in ("unknown", "up", "down")
}


class Farm:
    """Live registry state for one dispatcher process.

    ``snapshot`` is replaced, never mutated; ``redirects`` counts redirects per site and
    reason: what the hot path counts in the snapshot when it runs in this process, plus the
    totals the workers report (:meth:`add_redirects`). ``on_change`` (if set) is called
    after every change the workers must see: registry, health state, load, rules,
    configuration. The snapshot is rebuilt for those changes only, never for a probe result
    that leaves a site's state as it was. ``worker_views`` (if set) lists the worker
    processes: pid, the state generation each acked last, restarts (for a status view).
    ``rtt_view`` is what the sites' switches learned of client networks' RTT
    (:mod:`dispatcher.placement.rtt`), rebuilt off the event loop when a site's table
    arrives or ages out, at most once per ``rtt_rebuild_every`` seconds (what arrives
    meanwhile waits for the next refresh).
    """

    def __init__(self, config: Config, store: SiteStore, prober: Prober | None = None) -> None:
        self.config = config
        self.store = store
        self.prober = prober or Prober(self._on_health)
        self.redirects = RedirectCounts()
        self._sites: tuple[SiteSpec, ...] = ()
        self._revision = -1
        self._loads: dict[str, Load] = {}
        self._rules: RewriteProgram | None = None
        self._rtt = LearnedRtt()
        self.rtt_view = EMPTY_VIEW
        self.rtt_rebuild_every = RTT_REBUILD_EVERY
        self._rtt_next_build = 0.0
        self._refreshing = asyncio.Lock()
        self._in_flight: set[asyncio.Task[Any]] = set()
        self.on_change: Callable[[], None] | None = None
        self.worker_views: Callable[[], Sequence[WorkerView]] | None = None
        self.started = False
        """Set once :meth:`start` ran: the registry was read and every site probed once."""
        self.database_answered: float | None = None
        """When a store call last succeeded (monotonic), for readiness: no store call there."""
        self.refreshed_at: float | None = None
        """When the registry was last read in full from the store (monotonic)."""
        self.reloads = 0
        """Reloads applied (SIGHUP): a worker reads its TLS files again when it changes."""
        self._health_changed = False  # a state change not in the snapshot yet
        self._installing = False
        self._last: Snapshot | None = None
        self.locator = locator_for(config)
        self.dns = DnsTotals()
        """The DNS front's counters, the workers' reports added up (and this process's)."""
        self.dns_changes = ChangeTracker()  # (explain's; shipped to the workers' own)
        self.snapshot = self._build()
        self.redirects.follow(self.snapshot.placed)

    # --- life cycle ---

    async def start(self) -> None:
        """Seed the registry from the config (first start only), then probe every site once.

        When this returns, every site's health is known: the first client is never sent
        to a dead site.
        """
        if await self._io(self.store.seed, self.config.sites):
            log.info(
                "seeded the registry with %d site(s) from %s",
                len(self.config.sites),
                self.config.source,
            )
        await self._io(self.adopt_rule_file)
        await self.refresh()
        self.started = True

    async def stop(self, timeout: float = 10.0) -> bool:
        """Stop probing and wait (bounded) for store calls still running in worker threads;
        False if some are still running after ``timeout`` (a hung database).

        A caller cancelled while its store call runs does not stop the thread; closing the
        store under it would strand the thread's database connection.
        """
        await self.prober.close()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout)
        return not self._in_flight

    async def _io(self, call: Callable[..., T], /, *args: Any) -> T:
        """Run a blocking store call in a worker thread; tracked so :meth:`stop` can wait.

        The store bounds every call by ``database_timeout``; this answers
        :class:`StoreUnavailable` one second after that in any case (the thread, if it is
        still stuck, is left to end on its own and :meth:`stop` waits for it, bounded).
        """
        task = asyncio.ensure_future(asyncio.to_thread(call, *args))
        self._in_flight.add(task)
        task.add_done_callback(self._forget)
        limit = self.config.dispatcher.database_timeout + 1.0
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            raise StoreUnavailable(f"the database did not answer within {limit:g} s")
        return task.result()

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.discard(task)
        # retrieved here too: its caller may have been cancelled
        if not task.cancelled() and task.exception() is None:
            self.database_answered = time.monotonic()

    async def refresh(self) -> str:
        """Pick up changes other replicas made; return a short status for the log."""
        async with self._refreshing:
            revision = await self._io(self.store.revision)
            read_at = time.monotonic()
            loads = await self._io(self.store.loads)
            new_rtt = await self._refresh_rtt()
            changed = revision != self._revision
            if changed:
                sites = await self._io(self.store.list_sites)
                stored = await self._io(self.store.get_rules)
                self._rules = self._compile_stored(stored)
                await self._install(revision, sites)
            new_loads = self._merge_loads(loads, read_at)
            if (new_loads or new_rtt) and not changed:
                self._changed()
            self.refreshed_at = time.monotonic()
        return f"revision {revision}{' (reloaded)' if changed else ''}, {new_loads} new load(s)"

    async def run_refresher(self, interval: float) -> None:
        """Call :meth:`refresh` every ``interval`` seconds until cancelled; errors are logged."""
        warnings = ThrottledLog(log)  # an outage of minutes is a few lines, not one a refresh
        while True:
            await asyncio.sleep(interval)
            try:
                log.debug("refresh: %s", await self.refresh())
            except StoreError as exc:
                warnings.report(
                    type(exc).__name__,
                    "registry refresh failed, keeping the last snapshot: %s",
                    exc,
                )
            except Exception:  # a bug must not end refreshing for good
                log.exception("registry refresh failed unexpectedly, keeping the last snapshot")

    # --- changes from the admin API ---

    async def _refresh_after_write(self) -> None:
        """Show a stored change at once; if the database fails right after the write, the
        change stands (it is stored) and the refresher shows it when the database is back."""
        try:
            await self.refresh()
        except StoreError as exc:
            log.warning("stored a change, but could not reload the registry: %s", exc)

    async def create_site(self, site: SiteSpec, audit: AuditHook | None = None) -> SiteSpec:
        self._check_site(site)
        created = await self._io(self.store.create_site, site, audit)
        await self._refresh_after_write()
        return created

    async def modify_site(
        self, name: str, change: Callable[[SiteSpec], SiteSpec], audit: AuditHook | None = None
    ) -> SiteSpec:
        def checked(site: SiteSpec) -> SiteSpec:
            new = change(site)
            self._check_site(new)
            return new

        modified = await self._io(self.store.modify_site, name, checked, audit)
        await self._refresh_after_write()
        return modified

    async def delete_site(self, name: str, audit: AuditHook | None = None) -> None:
        await self._io(self.store.delete_site, name, audit)
        self.redirects.forget(name)
        await self._refresh_after_write()

    async def report_load(
        self,
        site: str,
        load: float,
        connections: int | None,
        rtt: tuple[RttEntry, ...] | None = None,
    ) -> LoadReport:
        report = LoadReport(site, load, connections, _now())
        table = None if rtt is None else RttReport(site, rtt, report.reported_at)
        await self._io(self.store.record_load, report, table)
        self._loads[site] = Load(report, time.monotonic())
        if table is not None and self._rtt.adopt(table, report.reported_at):
            await self._rebuild_rtt()
        self._changed()
        return report

    async def _refresh_rtt(self) -> bool:
        """Read the RTT tables other replicas stored, forget the stale ones, rebuild the
        view if it is behind (and due); ``True`` when the view changed."""
        now = _now()
        stamps = await self._io(self.store.rtt_stamps)
        wanted = self._rtt.wanted(stamps, now)
        fetched = await self._io(self.store.rtt_tables, wanted) if wanted else {}
        self._rtt.merge(stamps, fetched.values(), now)
        return await self._rebuild_rtt()

    async def _rebuild_rtt(self) -> bool:
        """Build the view of the tables held, in a thread, unless it is up to date or the
        last build is less than ``rtt_rebuild_every`` seconds old; ``True`` if replaced."""
        generation, reports = self._rtt.current()
        now = time.monotonic()
        if generation == self.rtt_view.generation or now < self._rtt_next_build:
            return False
        self._rtt_next_build = now + self.rtt_rebuild_every
        view = await asyncio.to_thread(build_view, reports, generation)
        if view.generation <= self.rtt_view.generation:  # one built from a newer state won
            return False
        self.rtt_view = view
        return True

    # --- rewrite rules ---

    def compile(self, text: str, origin: str) -> RewriteProgram:
        """Compile rule text against this farm's pools; :class:`RuleSyntaxError` if invalid."""
        return compile_rules(
            text,
            filename=origin,
            base_dir=self.config.rules_base_dir,
            known_pools=self.config.pools,
        )

    def adopt_rule_file(self) -> bool:
        """Store the configured rule file's text if it changed since it was last adopted.

        An edited file wins over rules set through the API before; an unchanged file does
        not undo them. Raises :class:`RuleFileError` / :class:`RuleSyntaxError` (naming the
        file and line) when the file cannot be used. Blocking: run it in a thread.
        """
        path = self.config.dispatcher.rules
        if path is None:
            return False
        program = load_rules(path, known_pools=self.config.pools)
        digest = hashlib.sha256(program.source.encode()).hexdigest()
        stored = self.store.get_rules()
        if stored is not None and stored.file_digest == digest:
            return False
        counts = {digest: program.rule_count}
        if self._rules is not None:
            counts.setdefault(full_digest(self._rules.source), self._rules.rule_count)
        hook = rules_hook(NO_TOKEN, "adopted", counts)
        self.store.set_rules(StoredRules(program.source, str(path), digest, _now()), hook)
        log.info("adopted rewrite rules from %s (%d rules)", path, program.rule_count)
        return True

    async def set_rules(self, text: str, token: str = NO_TOKEN) -> RewriteProgram:
        """Validate, store and swap in new rules; the running ones stay if ``text`` is bad.
        The change is recorded in the audit trail as made by ``token`` (its name)."""
        program = await asyncio.to_thread(self.compile, text, "<admin API>")
        stored = await self._io(self.store.get_rules)
        digest = stored.file_digest if stored else None
        rules = StoredRules(text, "admin API", digest, _now())
        counts = {full_digest(text): program.rule_count}
        if self._rules is not None:
            counts.setdefault(full_digest(self._rules.source), self._rules.rule_count)
        await self._io(self.store.set_rules, rules, rules_hook(token, "replaced", counts))
        await self._refresh_after_write()
        return program

    async def audit_records(self, query: AuditQuery) -> tuple[AuditRecord, ...]:
        return await self._io(self.store.audit_records, query)

    async def current_rules(self) -> StoredRules | None:
        return await self._io(self.store.get_rules)

    def _compile_stored(self, stored: StoredRules | None) -> RewriteProgram | None:
        if stored is None:
            return None
        if self._rules is not None and self._rules.source == stored.text:
            return self._rules
        try:
            return self.compile(stored.text, stored.origin)
        except RewriteError as exc:  # e.g. a map file that has gone missing since
            if self._revision < 0:  # at start-up: refuse to run without them
                raise
            log.error("stored rewrite rules no longer compile, keeping the running ones: %s", exc)  # noqa: TRY400 - the message is the whole story
            return self._rules

    # --- configuration reload and worker processes ---

    async def reconfigure(self, config: Config) -> None:
        """Run on ``config`` from now on (a reload), once :meth:`check_config` accepted it.

        The rules that will run (the rule file's, if it changed, else the stored ones) are
        compiled against the new pools first: if they do not compile, nothing changes and
        the error is raised. Then the rule file is adopted again if it changed, and the new
        snapshot is built and announced.
        """
        locator = await asyncio.to_thread(locator_for, config)  # (a big prefix map: ~1 s)
        old, self.config = self.config, config
        old_locator, self.locator = self.locator, locator
        try:
            await self._io(self._check_rules)
            await self._io(self.adopt_rule_file)
            stored = await self._io(self.store.get_rules)
            self._rules = None if stored is None else self.compile(stored.text, stored.origin)
        except BaseException:
            self.config, self.locator = old, old_locator
            raise
        self.reloads += 1  # (the same TLS paths may hold a renewed certificate)
        self._changed()

    def _check_rules(self) -> None:
        """Compile the rules the current config would run; raise if they do not compile."""
        stored = self.store.get_rules()
        path = self.config.dispatcher.rules
        if path is not None:
            program = load_rules(path, known_pools=self.config.pools)
            digest = hashlib.sha256(program.source.encode()).hexdigest()
            if stored is None or stored.file_digest != digest:
                return  # the file's rules replace the stored ones, and they compiled
        if stored is not None:
            self.compile(stored.text, stored.origin)

    def check_config(self, config: Config) -> None:
        """Raise :class:`InvalidValue` if ``config`` cannot run the registry as it stands:
        a pool that registered sites still use is gone, or a site points at the new
        listeners."""
        for site in self._sites:
            if site.pool not in config.pools:
                raise InvalidValue(
                    "pools",
                    f"pool {site.pool!r} kept: site {site.name!r} is in it (move it first)",
                )
            check_not_self(site.base_url, config.dispatcher, f"site {site.name!r} base_url")

    def worker_state(self, generation: int) -> WorkerState:
        """What a worker needs to build the current snapshot itself."""
        rules = self._rules
        return WorkerState(
            generation=generation,
            config=for_workers(self.config),
            revision=self._revision,
            sites=self._sites,
            health={site.name: self.prober.health(site.name).state for site in self._sites},
            loads=dict(self._loads),
            rules=None if rules is None else RulesText(rules.source, rules.filename),
            rtt=self.rtt_view,
            reloads=self.reloads,
            dns_history=self.dns_changes.history(),
        )

    def add_redirects(self, counts: Mapping[str, Sequence[int]]) -> None:
        """Add a worker's redirect counts per site and reason (by slot of
        :data:`~dispatcher.counts.REASONS`) to the totals (sites no longer registered are
        dropped)."""
        sites = self.snapshot.sites
        self.redirects.add({name: n for name, n in counts.items() if name in sites})

    @property
    def dns_history(self) -> dict[str, float]:
        """When each pool last changed, as this process saw it (see
        :class:`~dispatcher.dns.service.DnsSource`)."""
        return self.dns_changes.history()

    # --- internals ---

    def _check_site(self, site: SiteSpec) -> None:
        if site.pool not in self.config.pools:
            raise InvalidValue("pool", f"one of the configured pools {sorted(self.config.pools)}")
        check_not_self(site.base_url, self.config.dispatcher, "base_url")

    async def _install(self, revision: int, sites: tuple[SiteSpec, ...]) -> None:
        self._sites, self._revision = sites, revision
        self._installing = True  # the first probes of new sites: one snapshot after them all
        try:
            await self.prober.sync(_target(site) for site in sites)
        finally:
            self._installing = False
            if self._health_changed:  # (for the case sync() did not return)
                asyncio.get_running_loop().call_soon(self._apply_health)
        self._changed()

    def _merge_loads(self, loads: Mapping[str, LoadReport], read_at: float) -> int:
        """Adopt reports newer than what we hold; return how many were new.

        ``loads`` were read from the store starting at ``read_at`` (monotonic): a site they
        lack is forgotten, unless its report reached this process after that (the read
        could not see it yet)."""
        now_wall, now = dt.datetime.now(dt.UTC), time.monotonic()
        fresh = 0
        for name, report in loads.items():
            held = self._loads.get(name)
            if held is not None and held.report.reported_at >= report.reported_at:
                continue
            age = max(0.0, (now_wall - report.reported_at).total_seconds())
            self._loads[name] = Load(report, now - age)
            fresh += 1
        for name in set(self._loads) - set(loads):
            if self._loads[name].received < read_at:
                del self._loads[name]
        return fresh

    def _on_health(self, key: str, health: Health, changed: bool) -> None:
        """A probe result: only an up/down change is placement's business. Any other result
        costs no snapshot and nothing shipped (the admin API reads the last probe from the
        prober, :meth:`last_probe`). Changes heard in one turn of the event loop (a first
        round of a thousand probes, an outage seen by many at once) make one snapshot, at
        the end of that turn."""
        if changed and not self._health_changed:
            self._health_changed = True
            if not self._installing:  # (else the install's own snapshot comes next)
                asyncio.get_running_loop().call_soon(self._apply_health)

    def _apply_health(self) -> None:
        if self._health_changed:  # (else a snapshot was built since: it has them)
            self._changed()

    def last_probe(self, name: str) -> ProbeResult | None:
        """The last counted probe of site ``name`` (``None`` before the first one)."""
        return self.prober.health(name).last

    def _changed(self) -> None:
        self._health_changed = False
        snapshot = self._build()
        self.redirects.follow(snapshot.placed)  # (the old snapshot's counts folded first)
        self.snapshot = snapshot
        if self.on_change is not None:
            self.on_change()

    def _build(self) -> Snapshot:
        snapshot = build_snapshot(
            self.config,
            revision=self._revision,
            sites=self._sites,
            health=self._placement_health,
            loads=self._loads,
            previous=self._last,
            rules=self._rules,
            where=Where(self.locator, self.rtt_view),
        )
        self._last = snapshot
        self.dns_changes.observe(snapshot, time.monotonic())
        return snapshot

    def _placement_health(self, name: str) -> Health:
        """A site's health as the snapshot holds it: its state only, as the workers' (the
        last probe changes with every probe, and the snapshot is not rebuilt for it)."""
        return _STATE_ONLY[self.prober.health(name).state]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _target(site: SiteSpec) -> Target:
    check = site.check
    return Target(
        key=site.name,
        url=site.check_url,
        expect=check.expect,
        interval=check.interval,
        timeout=check.timeout,
        rise=check.rise,
        fall=check.fall,
    )
