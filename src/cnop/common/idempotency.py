"""Idempotency records: a repeated request with the same key returns the first result.

A record is claimed (status `in_progress`, with an owner token and a lease) before the work runs;
the work's own transaction marks it `applied` under the owner's condition, so a request can only
take effect once; then the response is stored for replays. A claim whose lease ran out (its
process died before applying anything) may be taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.store import (
    And,
    Delete,
    Eq,
    Item,
    ItemStore,
    Lt,
    NotExists,
    Op,
    Or,
    Page,
    Put,
    SortKey,
    Update,
)
from cnop.common.exceptions import (
    ConditionFailed,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    ValidationFailed,
)
from cnop.common.jsonio import dumps

_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    key: dict[str, str]
    owner: str


@dataclass(frozen=True, slots=True)
class Applied:
    """A key whose work committed but whose response was never saved (the process died between)."""

    key: dict[str, str]
    result_id: str


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """One stored key, as read back (`IdempotencyRecords.get_records`): `status` is
    `in_progress`, `applied` or `completed`; the response is there once completed."""

    username: str
    scope: str
    client_key: str
    status: str
    fingerprint: str
    owner: str
    lease_until: Decimal
    expires_at: Decimal
    result_id: str | None = None
    response_status: int | None = None
    response_body: str | None = None


def _record_from_item(username: str, item: Item) -> IdempotencyRecord:
    scope, client_key = keys.idempotency_scope_and_key(item)
    status = item.get("response_status")
    return IdempotencyRecord(
        username=username,
        scope=scope,
        client_key=client_key,
        status=item["status"],
        fingerprint=item["fingerprint"],
        owner=item["owner"],
        lease_until=item["lease_until"],
        expires_at=item["expires_at"],
        result_id=item.get("result_id"),
        response_status=int(status) if status is not None else None,
        response_body=item.get("response_body"),
    )


MarkApplied = Callable[[str], Op]
"""Goes into a use case's transaction, given the id of what it creates (ledger entry or order)."""

_applying: ContextVar[MarkApplied | None] = ContextVar("cnop_idempotency_applying", default=None)


def applying_mark() -> MarkApplied | None:
    """The mark the running use case puts into its one transaction, or None (no idempotency key).

    Set by the idempotency wrapper (`cnop.services.idempotent`) around the use case, so the use
    case's signature carries no store op: whoever builds the transaction asks for it here.
    """
    return _applying.get()


@contextlib.contextmanager
def applying(mark: MarkApplied) -> Iterator[None]:
    """Run the use case inside with `mark` as its idempotency record's mark."""
    token = _applying.set(mark)
    try:
        yield
    finally:
        _applying.reset(token)


def request_fingerprint(payload: Any) -> str:
    return hashlib.sha256(dumps(payload)).hexdigest()


def check_key(client_key: str) -> str:
    if not _KEY_PATTERN.fullmatch(client_key):
        raise ValidationFailed.field("Idempotency-Key", "must be 1-255 printable ASCII characters")
    return client_key


class IdempotencyRecords:
    def __init__(self, store: ItemStore, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.ttl = settings.idempotency_ttl_seconds
        self.lease = settings.idempotency_lease_seconds

    async def begin(
        self, username: str, scope: str, client_key: str, fingerprint: str
    ) -> Claim | StoredResponse | Applied:
        """Claim the key, or return the stored first response (or what the applied work created).

        Reuse with another body and repeats while the first is running are refused.
        """
        key = keys.idempotency_key(username, scope, check_key(client_key))
        now = Decimal(int(self.clock.timestamp()))
        owner = uuid.uuid4().hex
        item = {
            **key,
            "status": "in_progress",
            "fingerprint": fingerprint,
            "owner": owner,
            "lease_until": now + self.lease,
            "expires_at": now + self.ttl,
        }
        takeover = And(Eq("status", "in_progress"), Eq("fingerprint", fingerprint), Lt("lease_until", now))
        try:
            await self.store.transact([Put(keys.USERS, item, Or(NotExists(), takeover))])
            return Claim(key, owner)
        except ConditionFailed:
            pass
        existing = await self.store.get(keys.USERS, key)
        if existing is None:  # expired between the two calls: try once more
            return await self.begin(username, scope, client_key, fingerprint)
        if existing["fingerprint"] != fingerprint:
            raise IdempotencyKeyReused()
        if existing["status"] == "completed":
            return StoredResponse(int(existing["response_status"]), existing["response_body"].encode())
        if existing["status"] == "applied" and existing.get("result_id"):
            return Applied(key, str(existing["result_id"]))
        raise IdempotencyInProgress()

    async def stored_response(self, username: str, scope: str, client_key: str) -> StoredResponse | None:
        """The first response stored under a key, while it is kept; None if none is (yet)."""
        if not _KEY_PATTERN.fullmatch(client_key):
            return None
        item = await self.store.get(keys.USERS, keys.idempotency_key(username, scope, client_key))
        if item is None or item.get("status") != "completed":
            return None
        return StoredResponse(int(item["response_status"]), item["response_body"].encode())

    async def get_records(
        self, username: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page[IdempotencyRecord]:
        """The user's stored keys (every scope) while they are kept, by scope and key."""
        page = await self.store.query(
            keys.USERS,
            keys.user_pk(username),
            sk=SortKey.prefix(keys.IDEMPOTENCY_PREFIX),
            limit=limit,
            cursor=cursor,
        )
        return Page([_record_from_item(username, item) for item in page.items], page.next_cursor)

    def apply_op(self, claim: Claim) -> MarkApplied:
        """What the work puts in its transaction: it applies only while this claim is the owner,
        and records the id of what the work created, so a replay can rebuild the answer."""

        def mark(result_id: str) -> Op:
            return Update(
                keys.USERS,
                claim.key,
                set={"status": "applied", "result_id": result_id},
                condition=And(Eq("owner", claim.owner), Eq("status", "in_progress")),
            )

        return mark

    async def complete_applied(self, applied: Applied, status_code: int, body: bytes) -> None:
        """Save the rebuilt response of an applied key (if another replay did not save one first)."""
        with contextlib.suppress(ConditionFailed):
            await self.store.transact(
                [
                    Update(
                        keys.USERS,
                        applied.key,
                        set={"status": "completed", "response_status": status_code, "response_body": body.decode()},
                        condition=Eq("status", "applied"),
                    )
                ]
            )

    async def finish(self, claim: Claim, status_code: int, body: bytes) -> None:
        await self.store.transact(
            [
                Update(
                    keys.USERS,
                    claim.key,
                    set={
                        "status": "completed",
                        "response_status": status_code,
                        "response_body": body.decode(),
                    },
                    condition=Eq("owner", claim.owner),
                )
            ]
        )

    async def abandon(self, claim: Claim) -> None:
        """Release a claim whose work did not happen (an outage), so the client may retry.

        Only while it is still `in_progress`: a store error can arrive after the work's
        transaction was applied (a timeout on the commit's answer), and deleting the `applied`
        record then would let a retry apply the work a second time.
        """
        with contextlib.suppress(ConditionFailed):
            condition = And(Eq("owner", claim.owner), Eq("status", "in_progress"))
            await self.store.transact([Delete(keys.USERS, claim.key, condition)])
