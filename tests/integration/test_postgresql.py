"""The quota book's tests and showback's, again on a real PostgreSQL (production's database,
podbay[postgresql]; a server started for the run). The tests are the unit tests' own, collected
here a second time with `db_url` pointing at PostgreSQL instead of SQLite."""

import pytest
from sqlalchemy import MetaData, create_engine

from tests.unit.test_quota_book import (  # noqa: F401 - collected here again
    test_a_claim_can_replace_what_its_key_still_holds_in_one_transaction,
    test_a_job_the_engine_lets_run_is_recorded_past_podbays_job_quota,
    test_claim_and_release,
    test_migrations_match_the_models,
    test_opening_an_existing_ledger_keeps_its_claims,
    test_quota_arithmetic,
    test_quota_counts_the_team_not_the_user,
    test_quota_holds_under_concurrent_claims,
    test_reconcile_releases_what_no_longer_runs,
    test_same_key_twice_is_refused,
    test_shared_slots_pack_onto_one_gpu_and_carry_the_bare_uuid,
    test_snapshot_follows_claims_made_elsewhere,
    test_two_processes_racing_for_the_last_device,
    test_where_the_engine_places_the_book_records_units_and_no_device,
    test_whole_gpus_come_from_one_node,
    test_workspaces_per_user,
)
from tests.unit.test_demand import (  # noqa: F401
    test_a_job_waiting_for_room_is_one_request,
    test_demand_is_pruned_with_the_usage_history,
    test_demand_reads_back_as_a_trace,
    test_each_request_is_recorded_with_what_it_got,
)
from tests.unit.test_jobs import test_jobs_stored_before_the_rename_keep_their_gpus_per_node  # noqa: F401
from tests.unit.test_usage import (  # noqa: F401
    store, test_showback_from_a_scripted_history, test_showback_reuses_its_sums_until_the_book_is_written,
)


@pytest.fixture
def db_url(postgres_url):
    """The server's database, emptied of whatever the test before left."""
    engine = create_engine(postgres_url)
    existing = MetaData()
    existing.reflect(engine)
    existing.drop_all(engine)
    engine.dispose()
    return postgres_url
