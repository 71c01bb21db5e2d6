"""The dispatcher's live state: the registry, health and load, folded into snapshots.

:class:`Farm` owns the slow side. It reads and writes the store (in worker threads),
drives the prober, takes load reports, and after every change swaps in a new
:class:`~dispatcher.backends.snapshot.Snapshot` for the hot path to read. When the hot path
runs in worker processes, ``on_change`` is told of every change they must see, and
:meth:`Farm.worker_state` is what is shipped to them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dispatcher.backends.health import Health, Prober, Target
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.snapshot import Load, Snapshot, build_snapshot
from dispatcher.backends.store import LoadReport, SiteStore, StoredRules
from dispatcher.config import Config, check_not_self
from dispatcher.dns.ttl import ChangeTracker
from dispatcher.errors import InvalidValue, StoreError, StoreUnavailable
from dispatcher.policies import Policy
from dispatcher.redirect import RewriteError, RewriteProgram, compile_rules, load_rules
from dispatcher.throttle import ThrottledLog
from dispatcher.wire import RulesText, WorkerState, for_workers

if TYPE_CHECKING:
    from dispatcher.control import WorkerView

log = logging.getLogger("webfarm.farm")
T = TypeVar("T")


class Farm:
    """Live registry state for one dispatcher process.

    ``snapshot`` is replaced, never mutated; ``redirects`` counts redirects per site: bumped
    by the hot path when it runs in this process, else the totals the workers report
    (:meth:`add_redirects`). ``on_change`` (if set) is called after every change the workers
    must see: registry, health state, load, rules, configuration, not every probe.
    ``worker_views`` (if set) lists the worker processes: pid, the state generation each
    acked last, restarts (for a status view).
    """

    def __init__(self, config: Config, store: SiteStore, prober: Prober | None = None) -> None:
        self.config = config
        self.store = store
        self.prober = prober or Prober(self._on_health)
        self.redirects: defaultdict[str, int] = defaultdict(int)
        self._sites: tuple[SiteSpec, ...] = ()
        self._revision = -1
        self._loads: dict[str, Load] = {}
        self._policies: dict[str, Policy] = {}
        self._rules: RewriteProgram | None = None
        self._refreshing = asyncio.Lock()
        self._in_flight: set[asyncio.Task[Any]] = set()
        self.on_change: Callable[[], None] | None = None
        self.worker_views: Callable[[], Sequence[WorkerView]] | None = None
        self.dns_counts: defaultdict[str, int] = defaultdict(int)
        self.dns_changes = ChangeTracker()  # (for explain: the workers keep their own)
        self.dns_local: Callable[[], Mapping[str, int]] | None = None
        self.snapshot = self._build()

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
        if not task.cancelled():
            task.exception()  # retrieved here too: its caller may have been cancelled

    async def refresh(self) -> str:
        """Pick up changes other replicas made; return a short status for the log."""
        async with self._refreshing:
            revision = await self._io(self.store.revision)
            loads = await self._io(self.store.loads)
            changed = revision != self._revision
            if changed:
                sites = await self._io(self.store.list_sites)
                stored = await self._io(self.store.get_rules)
                self._rules = self._compile_stored(stored)
                await self._install(revision, sites)
            new_loads = self._merge_loads(loads)
            if new_loads and not changed:
                self._changed()
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

    async def create_site(self, site: SiteSpec) -> SiteSpec:
        self._check_site(site)
        created = await self._io(self.store.create_site, site)
        await self._refresh_after_write()
        return created

    async def modify_site(self, name: str, change: Callable[[SiteSpec], SiteSpec]) -> SiteSpec:
        def checked(site: SiteSpec) -> SiteSpec:
            new = change(site)
            self._check_site(new)
            return new

        modified = await self._io(self.store.modify_site, name, checked)
        await self._refresh_after_write()
        return modified

    async def delete_site(self, name: str) -> None:
        await self._io(self.store.delete_site, name)
        self.redirects.pop(name, None)
        await self._refresh_after_write()

    async def report_load(self, site: str, load: float, connections: int | None) -> LoadReport:
        report = LoadReport(site, load, connections, _now())
        await self._io(self.store.record_load, report)
        self._loads[site] = Load(report, time.monotonic())
        self._changed()
        return report

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
        self.store.set_rules(StoredRules(program.source, str(path), digest, _now()))
        log.info("adopted rewrite rules from %s (%d rules)", path, program.rule_count)
        return True

    async def set_rules(self, text: str) -> RewriteProgram:
        """Validate, store and swap in new rules; the running ones stay if ``text`` is bad."""
        program = await asyncio.to_thread(self.compile, text, "<admin API>")
        stored = await self._io(self.store.get_rules)
        digest = stored.file_digest if stored else None
        rules = StoredRules(text, "admin API", digest, _now())
        await self._io(self.store.set_rules, rules)
        await self._refresh_after_write()
        return program

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
        old, self.config = self.config, config
        try:
            await self._io(self._check_rules)
            await self._io(self.adopt_rule_file)
            stored = await self._io(self.store.get_rules)
            self._rules = None if stored is None else self.compile(stored.text, stored.origin)
        except BaseException:
            self.config = old
            raise
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
        )

    def add_redirects(self, counts: Mapping[str, int]) -> None:
        """Add a worker's redirect counts to the totals (sites no longer registered are
        dropped)."""
        for name, count in counts.items():
            if name in self.snapshot.sites:
                self.redirects[name] += count

    def add_dns_counts(self, counts: Mapping[str, int]) -> None:
        """Add a worker's DNS counters to the totals."""
        for name, count in counts.items():
            self.dns_counts[name] += count

    def dns_totals(self) -> dict[str, int]:
        """The DNS front's counters since start: the workers' reports, plus this process's
        own front's when it runs one (``dns_local``)."""
        totals = dict(self.dns_counts)
        if self.dns_local is not None:
            for name, count in self.dns_local().items():
                totals[name] = totals.get(name, 0) + count
        return totals

    # --- internals ---

    def _check_site(self, site: SiteSpec) -> None:
        if site.pool not in self.config.pools:
            raise InvalidValue("pool", f"one of the configured pools {sorted(self.config.pools)}")
        check_not_self(site.base_url, self.config.dispatcher, "base_url")

    async def _install(self, revision: int, sites: tuple[SiteSpec, ...]) -> None:
        self._sites, self._revision = sites, revision
        await self.prober.sync(_target(site) for site in sites)
        self._changed()

    def _merge_loads(self, loads: Mapping[str, LoadReport]) -> int:
        """Adopt reports newer than what we hold; return how many were new."""
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
            del self._loads[name]
        return fresh

    def _on_health(self, key: str, health: Health, changed: bool) -> None:
        if changed:
            self._changed()
        else:  # the last probe's figures, for the admin API only
            self.snapshot = self._build()

    def _changed(self) -> None:
        self.snapshot = self._build()
        if self.on_change is not None:
            self.on_change()

    def _build(self) -> Snapshot:
        snapshot = build_snapshot(
            self.config,
            revision=self._revision,
            sites=self._sites,
            health=self.prober.health,
            loads=self._loads,
            policies=self._policies,
            rules=self._rules,
        )
        self._policies = {name: pool.policy for name, pool in snapshot.pools.items()}
        self.dns_changes.observe(snapshot, time.monotonic())
        return snapshot


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
