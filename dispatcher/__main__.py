"""``farm-dispatcher``: the command line. The only place in the dispatcher that exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import uvloop

from dispatcher import __version__
from dispatcher.backends.store import open_store
from dispatcher.config import Config, load_config
from dispatcher.demo import run_demo
from dispatcher.errors import ConfigError, DispatcherError, InvalidValue
from dispatcher.explain import explain, offline_snapshot, request_from_url
from dispatcher.redirect import RewriteError, load_rules
from dispatcher.server import Runner

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status (0 ok, 1 failure, 2 bad config)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except (ConfigError, RewriteError, InvalidValue) as exc:
        print(f"farm-dispatcher: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DispatcherError as exc:
        print(f"farm-dispatcher: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farm-dispatcher", description="webfarm's dispatcher: redirect clients to sites."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str, config: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument(
                "--config",
                "-c",
                default=os.environ.get("FARM_CONFIG", "farm.toml"),
                help="the TOML configuration file (default: $FARM_CONFIG or farm.toml)",
            )
        p.set_defaults(command=func)
        return p

    command("serve", _serve, "run the dispatcher (public and admin listeners)")
    command("check-config", _check_config, "validate a configuration file and exit")
    db = sub.add_parser("db", help="database schema commands").add_subparsers(
        required=True, metavar="DB_COMMAND"
    )
    for name, func, help_text in (
        ("upgrade", _db_upgrade, "bring the database schema to the newest revision"),
        ("current", _db_current, "print the database's schema revision"),
    ):
        p = db.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", default=os.environ.get("FARM_CONFIG", "farm.toml"))
        p.set_defaults(command=func)
    explain_cmd = command("explain", _explain, "show what a client asking for URL would get")
    explain_cmd.add_argument("url", help="the absolute URL the client asks for")
    explain_cmd.add_argument("--remote-addr", default="127.0.0.1", help="the client's address")
    explain_cmd.add_argument("--method", default="GET")
    explain_cmd.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable)",
    )
    demo = command("demo", _demo, "run a dispatcher in front of three demo sites", config=False)
    demo.add_argument("--port", type=int, default=8080, help="public port (admin is port+1)")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    rules = ""
    if config.dispatcher.rules is not None:
        program = load_rules(config.dispatcher.rules, known_pools=config.pools)
        rules = f", {program.rule_count} rewrite rule(s)"
    pools = ", ".join(config.pools)
    print(f"{config.source}: ok ({len(config.sites)} site(s), pools: {pools}{rules})")
    return EXIT_OK


def _db_upgrade(args: argparse.Namespace) -> int:
    settings = _config(args).dispatcher
    store = open_store(settings.database_url, timeout=settings.database_timeout)
    try:
        print(f"database schema at {store.upgrade()}")
    finally:
        store.close()
    return EXIT_OK


def _db_current(args: argparse.Namespace) -> int:
    settings = _config(args).dispatcher
    store = open_store(settings.database_url, timeout=settings.database_timeout)
    try:
        current, head = store.current(), store.head()
        state = "up to date" if current == head else f"behind (head is {head})"
        print(f"database schema at {current or 'nothing'}: {state}")
    finally:
        store.close()
    return EXIT_OK if current == head else EXIT_FAILURE


def _explain(args: argparse.Namespace) -> int:
    config = _config(args)
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise InvalidValue("--header", f"'Name: value', got {header!r}")
        headers.append((name.strip(), value.strip()))
    request = request_from_url(
        args.url, method=args.method, remote_addr=args.remote_addr, headers=headers
    )
    store = open_store(config.dispatcher.database_url, timeout=config.dispatcher.database_timeout)
    try:
        snapshot, note = offline_snapshot(config, store)
    finally:
        store.close()
    print(f"({note})")
    print(explain(snapshot, request).format())
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    return _run_until_signalled(lambda stop: Runner(config).serve(stop))


def _demo(args: argparse.Namespace) -> int:
    return _run_until_signalled(lambda stop: run_demo(stop, port=args.port))


def _run_until_signalled(
    body: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> int:
    """Run ``body(stop)`` on uvloop where available; SIGINT/SIGTERM only set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await body(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        loop_runner.run(runner())
    return EXIT_OK


if __name__ == "__main__":
    main()
