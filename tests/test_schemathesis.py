"""schemathesis against the live admin API: zero 5xx and zero schema disagreements.

A real dispatcher (uvicorn on loopback ports, SQLite) serves its own OpenAPI document;
schemathesis generates valid and invalid requests for every operation, with a token and
without, and checks each answer: never a server error, the status, content type, headers
and body as the document says, invalid input refused with a 4xx. The budget is bounded
(a few dozen examples per operation and mode, no shrinking).

Generated base URLs are loopback addresses on the discard port, and check URLs paths or
such URLs: the sites the API creates are probed, and probes go to loopback only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN, LoopbackSite, RunningDispatcher, farm_toml

pytestmark = pytest.mark.anyio
EXAMPLES = 15  # per operation and generation mode, with a token
EXAMPLES_NO_TOKEN = 8

LOOPBACK_URL = st.builds(
    "http://127.0.0.{}:9{}".format,
    st.integers(2, 254),
    st.from_regex(r"\A(/[A-Za-z0-9._~-]{0,12}){0,3}\Z"),
)
schemathesis.openapi.format("http-url", LOOPBACK_URL)
schemathesis.openapi.format(
    "check-url", st.one_of(st.from_regex(r"\A/[!-~]{0,40}\Z"), LOOPBACK_URL)
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
async def farm(sites: dict[str, LoopbackSite], tmp_path: Path) -> AsyncIterator[RunningDispatcher]:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(
        farm_toml({"eu": (sites["eu"], 1)}, database_url=f"sqlite:///{tmp_path / 'farm.db'}")
    )
    running = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    try:
        yield running
    finally:
        await running.close()


def _run(
    base_url: str,
    document: dict[str, Any],
    headers: dict[str, str],
    modes: tuple[GenerationMode, ...],
    examples: int,
    checks: list[Any],
) -> int:
    """Every operation in every mode; the number of requests made. Blocking (a thread)."""
    schema = schemathesis.openapi.from_dict(document)
    calls = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid
        operation = result.ok()
        for mode in modes:
            if mode is GenerationMode.NEGATIVE and not _negatable(operation):
                continue  # /livez, /readyz: no parameter, no body, no token to get wrong
            strategies = [operation.as_strategy(generation_mode=mode)]
            if "{name}" in operation.path and operation.method != "delete":
                # the configured site too: most generated names are not registered
                pinned = operation.as_strategy(generation_mode=mode, path_parameters={"name": "eu"})
                strategies.append(pinned)
            for strategy in strategies:

                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def test(case: Case[Any]) -> None:
                    nonlocal calls
                    calls += 1
                    case.call_and_validate(base_url=base_url, headers=headers, checks=checks)

                test()
    return calls


def _negatable(operation: Any) -> bool:
    """Whether a request to ``operation`` can be made invalid at all."""
    raw = operation.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody") or raw.get("security") != [])


async def _schemathesis(farm: RunningDispatcher, **kwargs: Any) -> int:
    document = (await farm.admin.get("/api/v1/openapi.json")).json()
    base_url = str(farm.admin.base_url).rstrip("/")
    call: Callable[[], int] = lambda: _run(base_url, document, **kwargs)  # noqa: E731
    return await asyncio.to_thread(call)


async def test_with_a_token(farm: RunningDispatcher) -> None:
    calls = await _schemathesis(
        farm,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        modes=(GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
        examples=EXAMPLES,
        checks=[*CHECKS, negative_data_rejection],
    )
    assert calls > 100
    # the public listener still works after all that
    assert (await farm.public.get("/")).status_code in (302, 503)


async def test_without_a_token(farm: RunningDispatcher) -> None:
    calls = await _schemathesis(
        farm,
        headers={},
        modes=(GenerationMode.POSITIVE,),
        examples=EXAMPLES_NO_TOKEN,
        checks=CHECKS,
    )
    assert calls > 20
    listing = await farm.admin.get("/api/v1/sites")
    assert [site["name"] for site in listing.json()["sites"]] == ["eu"]  # nothing changed
