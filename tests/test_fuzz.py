"""Fuzz the live trainer from its OpenAPI schema: whatever comes in, never a 5xx.

Schemathesis generates valid and invalid requests for every operation but the endless
`/api/stream`, each operation against a fresh real server (so a fuzzed "train 10^8 steps" in
one cannot slow the next). The schema is built from the app at import, because schemathesis
parametrizes tests at collection time (`schemathesis.pytest.from_fixture` fails on pytest 9:
it sets `Function._nodeid`, which pytest 9 no longer has); the first test proves that it is
exactly what the live server publishes at `/openapi.json`.

CI runs 25 examples per operation; for a longer run by hand, set `ACC_FUZZ_EXAMPLES`:

    ACC_FUZZ_EXAMPLES=300 python -m pytest tests/test_fuzz.py -x
"""

from __future__ import annotations

import os

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from acc.server.app import create_app


OPENAPI = create_app(open_session=lambda: None).openapi()  # no session: the app never starts
schema = schemathesis.openapi.from_dict(OPENAPI).exclude(path="/api/stream")
EXAMPLES = int(os.environ.get("ACC_FUZZ_EXAMPLES", "25"))


def test_fuzzed_schema_is_the_live_one(live_trainer):
    assert httpx.get(f"{live_trainer.base_url}/openapi.json").json() == OPENAPI


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, live_trainer):
    case.call_and_validate(base_url=live_trainer.base_url, checks=[not_a_server_error])
