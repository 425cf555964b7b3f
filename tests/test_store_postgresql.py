"""The PostgreSQL store beyond the contract: several processes on one database, its schema, a server that goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import asyncpg
import pytest

from chat.exceptions import ConfigError, Unavailable
from chat.protocol import Member, Message
from chat.settings import Settings
from chat.stores import SCHEMA_VERSION, Store, open_store, postgresql
from chat.stores.postgresql import PostgresStore
from tests.postgres import PostgresServer, postgres_server
from tests.redis_server import free_port

pytestmark = pytest.mark.anyio
__all__ = ["postgres_server"]  # a fixture for this module

ALICE = Member("a1", "alice")
BOB = Member("b2", "bob")
Opener = Callable[..., Awaitable[PostgresStore]]


def ignore(message: Message, epoch: str) -> None:
    """A ``committed`` callback for stores whose commits the test reads from the futures."""


@pytest.fixture
async def opened() -> AsyncIterator[Opener]:
    """Open stores (URL, settings changes); every one is stopped at the end."""
    stores: list[Store] = []

    async def open_(url: str, **changes: object) -> PostgresStore:
        store = PostgresStore(url, Settings(store=url).replace(**changes))
        await store.start(ignore)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        await store.stop()


async def settle(futures: list[asyncio.Future[Message]], seconds: float = 10) -> list[Message | BaseException]:
    """Wait (bounded) for every future; its message or its exception."""
    with anyio.fail_after(seconds):
        return list(await asyncio.gather(*futures, return_exceptions=True))


async def everything(store: Store, room: str) -> list[Message]:
    """The room's whole history, paged back to seq 1."""
    messages: list[Message] = []
    before: int | None = None
    while page := await store.history(room, before, 100):
        messages = page + messages
        before = page[0].seq
    return messages


async def test_two_processes_share_a_room(postgres_url: str, opened: Opener) -> None:
    """Two stores appending to one room at once get disjoint, gap-free seqs, and each sees every message."""
    first = await opened(postgres_url)
    second = await opened(postgres_url)
    futures = []
    for round_ in range(20):
        futures += [first.append("r", ALICE, f"a{round_}.{n}") for n in range(10)]
        futures += [second.append("r", BOB, f"b{round_}.{n}") for n in range(10)]
        await asyncio.sleep(0)  # the next round joins a later batch of each store
    messages = await settle(futures)
    assert all(isinstance(m, Message) for m in messages)
    seqs = sorted(m.seq for m in messages if isinstance(m, Message))
    assert seqs == list(range(1, 401))
    for store in (first, second):
        assert await everything(store, "r") == sorted(messages, key=lambda m: m.seq if isinstance(m, Message) else 0)
    mine = [m.seq for m in messages[:10] if isinstance(m, Message)]
    assert mine == sorted(mine)  # one store's appends keep their order


async def test_processes_starting_at_once_share_one_epoch(postgres_url: str, opened: Opener) -> None:
    """Two stores creating the schema at the same time agree on the database's epoch."""
    stores = await asyncio.gather(opened(postgres_url), opened(postgres_url))
    epochs = {(await store.snapshot("r", None, None, 0)).epoch for store in stores}
    assert len(epochs) == 1


async def test_a_newer_schema_is_refused(postgres_url: str, opened: Opener) -> None:
    """A database written by a newer release is refused with one line, and left as it was."""
    store = await opened(postgres_url)
    await store.stop()
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(
            "UPDATE chat_meta SET value = $1 WHERE key = 'schema_version'", str(SCHEMA_VERSION + 1)
        )
        with pytest.raises(ConfigError, match="newer release") as caught:
            await opened(postgres_url)
        assert "\n" not in str(caught.value)
        version = await connection.fetchval("SELECT value FROM chat_meta WHERE key = 'schema_version'")
        assert version == str(SCHEMA_VERSION + 1)
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("make_url", "expected"),
    [
        (lambda url: url.rsplit("/", 1)[0] + "/no_such_database", "does not exist"),
        (lambda url: f"postgresql://postgres:secret@127.0.0.1:{free_port()}/chat", "Connect call failed"),
        (lambda url: "postgresql://postgres@127.0.0.1:notaport/chat", "invalid"),
    ],
    ids=["unknown-database", "nobody-listening", "bad-url"],
)
async def test_unusable_server_is_one_line(
    postgres_url: str, opened: Opener, make_url: Callable[[str], str], expected: str
) -> None:
    """A store that cannot be opened raises ConfigError with one line, without the password."""
    with anyio.fail_after(10), pytest.raises(ConfigError) as caught:
        await opened(make_url(postgres_url))
    line = str(caught.value)
    assert expected in line
    assert "\n" not in line
    assert "secret" not in line


async def test_text_with_nul_round_trips(postgres_url: str, opened: Opener) -> None:
    """A text PostgreSQL's text type could not hold (NUL) is kept as it was sent."""
    store = await opened(postgres_url)
    text = "a\x00b é 🎉"
    [message] = await settle([store.append("r", ALICE, text)])
    assert isinstance(message, Message)
    [stored] = await store.history("r", None, 1)
    assert (stored.text, stored.frame) == (text, message.frame)


async def test_prune_by_age_keeps_the_recent(
    postgres_url: str, opened: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prune`` deletes the messages older than ``retention_seconds``; a member behind them starts afresh."""
    store = await opened(postgres_url, retention_seconds=60)
    await settle([store.append("r", ALICE, str(n)) for n in range(5)])
    later = postgresql._now_ms() + 3_600_000
    monkeypatch.setattr(postgresql, "_now_ms", lambda: later)
    await settle([store.append("r", ALICE, str(n)) for n in range(5, 7)])
    assert await store.prune() == 5
    assert [m.seq for m in await store.history("r", None, 100)] == [6, 7]
    epoch = (await store.snapshot("r", None, None, 0)).epoch
    assert not (await store.snapshot("r", 1, epoch, 10)).recovered
    assert (await store.snapshot("r", 5, epoch, 10)).recovered


async def test_prune_catches_up_with_a_lower_count(postgres_url: str, opened: Opener) -> None:
    """A store started with a lower ``retention_messages`` prunes what was kept under the higher one."""
    first = await opened(postgres_url)
    await settle([first.append("r", ALICE, str(n)) for n in range(10)])
    await first.stop()
    second = await opened(postgres_url, retention_messages=3)
    assert await second.prune() == 7
    assert [m.seq for m in await second.history("r", None, 100)] == [8, 9, 10]


async def wait_healthy(store: Store, seconds: float = 20) -> None:
    """Poll ``healthy`` until the store is back (there is no event for a server that came back)."""
    with anyio.fail_after(seconds):
        while not await store.healthy():  # noqa: ASYNC110 (nothing to wait on: the server is polled)
            await anyio.sleep(0.05)


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_server_stopped_and_started(postgres_server: PostgresServer, opened: Opener, how: str) -> None:
    """While the server is down appends fail fast and the store is unhealthy; once it is back, the same store
    works again, keeps everything committed and continues the sequence without a gap."""
    store = await opened(postgres_server.url())
    before = await settle([store.append("r", ALICE, str(n)) for n in range(5)])
    postgres_server.stop() if how == "stop" else postgres_server.kill()

    down = await settle([store.append("r", ALICE, "lost") for _ in range(3)], seconds=15)
    assert all(isinstance(result, Unavailable) for result in down)
    with anyio.fail_after(5):
        assert not await store.healthy()
    with anyio.fail_after(15), pytest.raises(Unavailable):
        await store.history("r", None, 10)

    postgres_server.start()
    await wait_healthy(store)
    after = await settle([store.append("r", ALICE, str(n)) for n in range(5, 8)])
    assert [m.seq for m in after if isinstance(m, Message)] == [6, 7, 8]
    kept = await store.history("r", None, 100)
    assert [m.text for m in kept] == [str(n) for n in range(8)]
    assert kept[:5] == before


async def test_frozen_server_times_out_and_recovers(
    postgres_server: PostgresServer, opened: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that stops answering fails appends after the write timeout; its connection is not used again."""
    monkeypatch.setattr(postgresql, "WRITE_TIMEOUT", 1.0)
    monkeypatch.setattr(postgresql, "CONNECT_TIMEOUT", 1.0)
    store = await opened(postgres_server.url())
    await settle([store.append("r", ALICE, "before")])
    postgres_server.freeze()
    try:
        [result] = await settle([store.append("r", ALICE, "frozen")], seconds=5)
        assert isinstance(result, Unavailable)
    finally:
        postgres_server.thaw()
    await wait_healthy(store)
    [message] = await settle([store.append("r", ALICE, "after")])
    assert isinstance(message, Message)
    texts = [m.text for m in await store.history("r", None, 10)]
    assert (texts[0], texts[-1]) == ("before", "after")  # "frozen" may or may not have committed
    assert [m.seq for m in await store.history("r", None, 10)] == list(range(1, len(texts) + 1))


def test_both_schemes_open_it() -> None:
    """``postgresql://`` and ``postgres://`` both name this store."""
    for url in ("postgresql://postgres@127.0.0.1/chat", "postgres://postgres@127.0.0.1/chat"):
        assert isinstance(open_store(url, Settings(store=url)), PostgresStore)


async def test_a_foreign_meta_table_is_refused(postgres_url: str, opened: Opener) -> None:
    """A database whose chat_meta holds no schema version and epoch of ours is refused, not written to."""
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("CREATE TABLE chat_meta (key text PRIMARY KEY, value text NOT NULL)")
        with pytest.raises(ConfigError, match="not ours"):
            await opened(postgres_url)
        assert await connection.fetchval("SELECT to_regclass('chat_rooms')") is None
    finally:
        await connection.close()
