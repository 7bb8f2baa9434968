"""`Daytona.list()` over many records, on SQLite and PostgreSQL: newest first, label and
state filters, and cursors that page through everything exactly once. The records are
written straight into the store (no sandboxes behind them, so they are in `error`, as
reconcile would leave them)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.controlplane_helpers import api_url, database_url, daytona, stack_fixture
from tests.runtime_helpers import Stack, needs_bwrap

pytestmark = needs_bwrap

stack = stack_fixture("list")
COUNT = 45


@pytest.fixture(scope="module")
def records(stack: Stack) -> Iterator[list[str]]:
    from controlplane.auth import Keys
    from controlplane.sandboxes.records import SandboxRecord
    from controlplane.store.db import open_engine
    from controlplane.store.schema import sandboxes as table

    engine = open_engine(database_url(stack))
    who = Keys(engine).authenticate(stack.api_key)
    assert who is not None
    now = time.time()
    ids = [f"listed-{i:03d}" for i in range(COUNT)]
    rows = [SandboxRecord(
        id=sandbox_id, organization_id=who.organization_id, name=sandbox_id, state="error", desired_state="started",
        pending=False, os_user="daytona", env={}, labels={"code-toolbox-language": "python", "mod": str(i % 3)},
        public=False, target="local", cpu=1, gpu=0, memory=1, disk=3, auto_stop_interval=15,
        auto_archive_interval=10080, auto_delete_interval=-1, network_block_all=True, preview_token="t",
        # Some share a creation time, so the cursor's id tiebreak matters.
        created_at=now - 100 - (i // 2), updated_at=now, snapshot="default", error_reason="no sandbox behind it",
        last_activity_at=now).values() for i, sandbox_id in enumerate(ids)]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    yield ids
    with engine.begin() as conn:
        conn.execute(table.delete().where(table.c.id.like("listed-%")))
    engine.dispose()


def test_list_pages_through_every_record_once_newest_first(stack: Stack, records: list[str]) -> None:
    from daytona import ListSandboxesQuery

    d = daytona(stack)
    live = d.create()  # one real, started sandbox: the newest of all
    try:
        listed = [s.id for s in d.list(ListSandboxesQuery(limit=7))]  # 7 pages of 7 or fewer
        assert listed == [live.id, *_newest_first(records)]
    finally:
        live.delete()


def _newest_first(ids: list[str]) -> list[str]:
    # created_at descending (index // 2 ascending), then id descending within a tie.
    return sorted(ids, key=lambda i: (int(i[-3:]) // 2, [-ord(c) for c in i]))


def test_list_filters_by_labels_and_states_across_pages(stack: Stack, records: list[str]) -> None:
    from daytona import ListSandboxesQuery

    d = daytona(stack)
    wanted = [i for i in _newest_first(records) if int(i[-3:]) % 3 == 1]
    assert [s.id for s in d.list(ListSandboxesQuery(labels={"mod": "1"}, limit=4))] == wanted
    assert list(d.list(ListSandboxesQuery(labels={"mod": "1", "code-toolbox-language": "typescript"}))) == []
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    errors = httpx.get(f"{api_url(stack)}/sandbox", params={"states": "error", "limit": "200"}, headers=headers)
    assert errors.status_code == 200
    assert [item["id"] for item in errors.json()["items"]] == _newest_first(records)
    started = httpx.get(f"{api_url(stack)}/sandbox", params={"states": "started"}, headers=headers)
    assert started.json() == {"items": [], "nextCursor": None}


def test_another_organization_lists_none_of_them(stack: Stack, records: list[str]) -> None:
    from tests.controlplane_helpers import extra_key

    assert list(daytona(stack, extra_key(stack, "lister-b")).list()) == []


@pytest.mark.parametrize("cursor", ["not-base64!", "bm90IGpzb24=", "WzEsMiwzXQ=="])
def test_a_cursor_this_server_did_not_hand_out_is_a_400(stack: Stack, cursor: str) -> None:
    response = httpx.get(f"{api_url(stack)}/sandbox", params={"cursor": cursor},
                         headers={"Authorization": f"Bearer {stack.api_key}"})
    assert response.status_code == 400, response.text
    assert "cursor" in response.json()["message"]
