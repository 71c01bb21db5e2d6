"""``farmnode``: the node daemon's command line. The only place in farmnode that exits.

Each subcommand is one function ``(args) -> exit status`` listed in :data:`COMMANDS`; every
one of them takes ``--config``. Exit statuses: 0 ok, 1 failure, 2 invalid configuration
(the message, naming file, key path and expectation, goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import uvloop

from dispatcher.logsetup import configure_logging
from dispatcher.sdnotify import Notifier
from farmnode import __version__
from farmnode.agents import AGENTS, AgentParamError, build_agent
from farmnode.agents.postgresql import FORCE_VALID, request_forced_promotion
from farmnode.config import NodeConfig, load_config
from farmnode.daemon import Node
from farmnode.errors import ConfigError, FarmnodeError
from farmnode.status import find_status, render_text

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "node.toml"
#: The longest ``--timeout`` of ``farmnode status``, in seconds.
MAX_TIMEOUT = 300.0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status (0 ok, 1 failure, 2 bad config)."""
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except ConfigError as exc:
        print(f"farmnode: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FarmnodeError as exc:
        print(f"farmnode: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# --- the commands -----------------------------------------------------------------------


def config_of(args: argparse.Namespace) -> NodeConfig:
    """The validated configuration named by ``--config`` (raises :class:`ConfigError`)."""
    return load_config(args.config)


def check_config(args: argparse.Namespace) -> int:
    """Validate the configuration, check what each resource agent needs on this system
    (:meth:`farmnode.agents.Agent.check`), and print a one-line summary.

    The report token is a secret of ``serve``: set nowhere, it is a note, not an error."""
    config = load_config(args.config, need_token=False)
    check_agents(config)
    report = (
        f", reporting to {config.report.url} as site {config.report.site}"
        if config.report is not None
        else ", no load reports"
    )
    print(
        f"{config.source}: ok (node {config.node.name}, {len(config.services)} service(s), "
        f"{config.real_server_count} real server(s){report})"
    )
    if config.report is not None and not config.report.token:
        print(
            f"{config.source}: note: report token: not set in this environment "
            "(FARMNODE_REPORT_TOKEN or report.token; needed by serve)"
        )
    return EXIT_OK


def check_agents(config: NodeConfig) -> None:
    """Each resource's :meth:`~farmnode.agents.Agent.check`, its error placed at the
    resource's key path (``groups[0].resources[1].data_dir``). The ``switch`` agent needs the
    daemon and checks nothing on the system."""
    if config.cluster is None:
        return
    for i, group in enumerate(config.cluster.groups):
        for j, resource in enumerate(group.resources):
            if resource.agent not in AGENTS:
                continue
            agent = build_agent(resource.agent_table(), name=resource.name)
            try:
                agent.check()
            except AgentParamError as exc:
                path = f"groups[{i}].resources[{j}].{exc.param}"
                raise ConfigError(config.source, path, exc.expected) from None


def promote(args: argparse.Namespace) -> int:
    """``farmnode promote --force NODE``: let NODE's next promotion of its PostgreSQL skip
    the synchronous and lag rules (the operator accepts losing what the old primary had and
    NODE lacks). Run on NODE itself, with its configuration."""
    config = config_of(args)
    if not args.force:
        raise FarmnodeError(
            "promote only overrides the promotion rules, and says so: give --force "
            "(an unforced promotion happens by itself when the rules allow it)"
        )
    if args.node != config.node.name:
        raise FarmnodeError(
            f"{config.source} is node {config.node.name}'s configuration: run "
            f"`farmnode promote --force {args.node}` on {args.node}"
        )
    databases = [
        (group.name, resource)
        for group in (config.cluster.groups if config.cluster is not None else ())
        for resource in group.resources
        if resource.agent == "postgresql"
    ]
    if not databases:
        raise FarmnodeError(f"{config.source}: no postgresql resource in any [[groups]]")
    for group, resource in databases:
        data_dir = str(resource.agent_table()["data_dir"])
        try:
            marker = request_forced_promotion(data_dir, args.node)
        except OSError as exc:
            raise FarmnodeError(f"cannot leave the request in {data_dir}: {exc}") from None
        print(
            f"{args.node}: group {group}: the next promotion of {resource.name} skips the "
            f"synchronous and lag rules (requested in {marker}; valid for "
            f"{FORCE_VALID / 60:.0f} minutes; the node tries again within the group's "
            "failure_timeout)"
        )
    return EXIT_OK


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", help="this node's name (a check that it is the right node)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="required: override the synchronous/lag rules once (may lose committed data)",
    )


def serve(args: argparse.Namespace) -> int:
    """Run the node until SIGINT or SIGTERM; SIGHUP reloads ``--config``."""
    path = args.config
    config = load_config(path)
    configure_logging(config.node.log_level, config.node.log_format)
    node = Node(config, loader=lambda: load_config(path), notifier=Notifier())

    async def body() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.request_stop)
        loop.add_signal_handler(signal.SIGHUP, node.request_reload)
        await node.run()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(body())
    except KeyboardInterrupt:  # a SIGINT before the handlers were in place
        return EXIT_OK
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """Ask the running node for its status and print it.

    Where to ask is all it needs (:func:`farmnode.status.find_status`): ``--address``, else
    ``FARMNODE_STATUS_LISTEN``, else ``node.status_listen`` of ``--config``; nothing else of
    the file is read, so it works after a reload the file broke, and without secrets."""
    target = find_status(args.config, os.environ, args.address)
    if target.port == 0:
        raise FarmnodeError(
            f"{target.origin}: node.status_listen has port 0 (a free port picked at start), "
            "so there is nothing to ask; give it a fixed port (or --address HOST:PORT)"
        )
    url = target.url
    who = f"node {target.node}" if target.node is not None else "the node"
    try:
        response = httpx.get(url, timeout=args.timeout, trust_env=False)
    except httpx.HTTPError as exc:
        print(
            f"farmnode: {who} is not running (nothing answers at {url}: {type(exc).__name__})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if response.status_code != 200:
        print(f"farmnode: {url} answered HTTP {response.status_code}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        document = response.json()
    except ValueError:
        print(f"farmnode: {url} did not answer JSON (is that a farmnode?)", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(render_text(document), end="")
    return EXIT_OK


def _timeout(text: str) -> float:
    """``--timeout``: a number of seconds, more than 0 and at most 300."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT:  # also refuses nan
        raise argparse.ArgumentTypeError(f"seconds > 0 and <= {MAX_TIMEOUT:g}, got {text!r}")
    return value


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the JSON document as is")
    parser.add_argument(
        "--timeout", type=_timeout, default=5.0, help="seconds to wait for the node (default 5)"
    )
    parser.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="ask the status listener there (the configuration file is not read)",
    )


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, one line of help, and the function that runs it.

    ``arguments`` adds the command's own options (``--config`` is added for every command).
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: tuple[Command, ...] = (
    Command("serve", "run the node daemon (SIGHUP reloads, SIGTERM stops)", serve),
    Command(
        "status",
        "print the running node's services and real servers",
        status,
        _status_arguments,
    ),
    Command("check-config", "validate a node configuration file and exit", check_config),
    Command(
        "promote",
        "force this node's next PostgreSQL promotion past the lag/synchronous rules",
        promote,
        _promote_arguments,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farmnode", description="webfarm's node daemon.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.add_argument(
            "--config",
            "-c",
            default=os.environ.get("FARMNODE_CONFIG", DEFAULT_CONFIG),
            help=f"the node's TOML configuration file (default: $FARMNODE_CONFIG or "
            f"{DEFAULT_CONFIG})",
        )
        if command.arguments is not None:
            command.arguments(p)
        p.set_defaults(command=command.run)
    return parser


if __name__ == "__main__":
    main()
