"""Fuzz podbay's REST service from its own OpenAPI document (schemathesis): whatever a
client sends, the answer is never a 5xx. Jobs are paused on this hub (PODBAY_PAUSE_JOBS),
so fuzzed commands are queued but never run."""

from __future__ import annotations

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.harness import TEST_CONFIG, Hub, free_port_block, have_proxy, require

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory):
    require(have_proxy(), "configurable-http-proxy is not installed")
    h = Hub(TEST_CONFIG, tmp_path_factory.mktemp("fuzz"), free_port_block(), keep_workspaces=False,
            extra_env={"PODBAY_PAUSE_JOBS": "1"})
    h.start()
    yield h
    h.stop()


def operations(hub):
    spec = httpx.get(f"{hub.url}/services/podbay/api/v1/openapi.json", timeout=30).json()
    return [r.ok() for r in schemathesis.openapi.from_dict(spec).get_all_operations()]


# schemathesis's pytest plugin does not load under pytest 9 here, so each operation's
# strategy is driven by hypothesis directly.
def test_no_server_errors(fuzz_hub):
    token = fuzz_hub.token("alice")
    ops = operations(fuzz_hub)
    assert {f"{op.method.upper()} {op.path.split('/api/v1')[1]}" for op in ops} >= {
        "GET /catalog", "GET /capacity", "GET /me", "GET /volumes", "POST /jobs", "GET /jobs",
        "GET /jobs/{job_id}", "GET /jobs/{job_id}/logs", "DELETE /jobs/{job_id}"}
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            try:
                response = case.call(base_url=fuzz_hub.url, headers={"Authorization": f"token {token}"}, timeout=5)
            except requests.exceptions.ReadTimeout:
                # Following the logs of a queued job streams until it ends; paused jobs never do.
                assert case.path.endswith("/logs"), f"{case.method} {case.path} timed out"
                return
            assert response.status_code < 500, \
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
            if response.status_code >= 400:
                assert set(response.json()) == {"error", "message"}, response.text
                assert token not in response.text

        check()
