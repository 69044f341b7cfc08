"""The retention decisions for statuses of finished async invocations, with sizes passed in as values."""

from __future__ import annotations

from kambda.gateway.retention import (
    LOW_WATER,
    BucketLimits,
    Retention,
    pages_to_release,
    rows_to_drop,
    status_bucket_limits,
)

MB = 1024 * 1024


def test_nothing_is_dropped_within_budget() -> None:
    assert rows_to_drop(rows=1000, used=MB, budget=MB) == 0
    assert rows_to_drop(rows=0, used=0, budget=MB) == 0


def test_over_budget_trims_to_the_low_water_mark() -> None:
    # 2,000 rows of 1 KiB against 1 MiB: keep 0.9 MiB worth (921 rows), i.e. drop 1,079 of them.
    dropped = rows_to_drop(rows=2000, used=2000 * 1024, budget=MB)
    assert dropped == 1079
    kept_bytes = (2000 - dropped) * 1024
    assert kept_bytes <= LOW_WATER * MB < kept_bytes + 1024


def test_just_over_budget_drops_a_tenth_not_a_row() -> None:
    # Hysteresis: one byte over does not mean one row per purge from now on.
    assert rows_to_drop(rows=1000, used=MB + 1, budget=MB) >= 99


def test_zero_budget_drops_everything_and_never_more_than_there_is() -> None:
    assert rows_to_drop(rows=10, used=5000, budget=0) == 10
    assert rows_to_drop(rows=3, used=10 * MB, budget=MB) == 3


def test_free_pages_up_to_one_trim_are_kept_for_reuse() -> None:
    page = 4096
    keep = int(MB * (1 - LOW_WATER)) // page  # 25 pages
    assert pages_to_release(free_pages=keep, page_size=page, budget=MB) == 0
    assert pages_to_release(free_pages=keep + 100, page_size=page, budget=MB) == 100
    assert pages_to_release(free_pages=7, page_size=page, budget=0) == 7


CREATED = BucketLimits(max_age=86400.0, max_bytes=-1, discard_old=False, duplicate_window=120.0)  # create_key_value


def test_a_new_bucket_gets_the_size_limit_and_discards_old_statuses() -> None:
    wanted = status_bucket_limits(CREATED, Retention(86400.0, 256 * MB))
    assert wanted == BucketLimits(86400.0, 256 * MB, True, 120.0)


def test_a_bucket_with_the_limits_already_is_left_alone() -> None:
    configured = BucketLimits(86400.0, 256 * MB, True, 120.0)
    assert status_bucket_limits(configured, Retention(86400.0, 256 * MB)) is None


def test_changed_limits_are_applied() -> None:
    configured = BucketLimits(86400.0, 256 * MB, True, 120.0)
    assert status_bucket_limits(configured, Retention(3600.0, 256 * MB)) == BucketLimits(3600.0, 256 * MB, True, 120.0)
    assert status_bucket_limits(configured, Retention(86400.0, MB)) == BucketLimits(86400.0, MB, True, 120.0)


def test_a_retention_shorter_than_the_duplicate_window_shortens_it() -> None:
    # JetStream refuses a duplicate window longer than max_age.
    assert status_bucket_limits(CREATED, Retention(30.0, MB)) == BucketLimits(30.0, MB, True, 30.0)


def test_zero_limits_stay_limits_on_jetstream() -> None:
    # 0 means "unlimited" to JetStream, the opposite of what a zero retention asks for.
    wanted = status_bucket_limits(CREATED, Retention(0.0, 0))
    assert wanted is not None
    assert wanted.max_age > 0
    assert wanted.max_bytes > 0
