"""Durable history on one node with no setup: the command line's default store, a SQLite file ``chat.db`` in
the working directory, keeps every acknowledged message across SIGTERM and SIGKILL, pages back to seq 1, and
refuses to start, with one line, when it cannot work."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2 as httpx
import pytest

from tests.postgres import PostgresServer, require_postgres_binaries

from .clients import WAIT, Frame, Participant, joined, page_history, say
from .server_process import FORBIDDEN_IN_LOG, ServerProcess, StartServer, refused_start, servers_on

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROOM = "ledger"
DATABASE = "chat.db"
KEY = "e2e-durable-key"
EXIT_DEADLINE = 15.0
STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)
SENDERS = 4
IN_FLIGHT_AT_THE_KILL = SENDERS * 8 // 2
"""Messages sent and not yet answered, summed over the senders (each keeps up to 8 on their way)."""


@pytest.fixture
def start_durable(tmp_path: Path) -> Iterator[StartServer]:
    """Servers on the command line's default store, all in the test's folder: one ``chat.db`` for them all."""
    yield from servers_on("memory://", {"store": None, "rate_per_second": 0}, cwd=str(tmp_path))


# --- restarts ----------------------------------------------------------------------------------


async def stop_while_publishing(
    server: ServerProcess, halt: Callable[[list[Participant]], Awaitable[None]]
) -> tuple[list[Participant], Participant, Participant]:
    """Four senders publish; a member leaves after 20 messages; ``halt`` stops the server while the senders
    go on. Returns the senders, the member that left and one that stayed to the end, all closed."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:

        async def member(name: str) -> Participant:
            ws, welcome = await stack.enter_async_context(joined(server, ROOM, name))
            participant = Participant(ws, welcome)
            tg.start_soon(participant.read)
            return participant

        leaver, stayer = await member("leaver"), await member("stayer")
        senders = [await member(f"sender{index}") for index in range(SENDERS)]
        for sender in senders:
            tg.start_soon(sender.publish)
        await leaver.wait_until(lambda: len(leaver.seqs()) >= 20, within=20)
        await leaver.ws.close()
        await leaver.wait_closed()
        enough = leaver.seqs()[-1] + 40
        await stayer.wait_until(lambda: len(stayer.seqs()) >= enough, within=20)
        await halt(senders)
        status = await anyio.to_thread.run_sync(server.wait_exit, EXIT_DEADLINE)
        assert status is not None, f"the server still runs {EXIT_DEADLINE} s after it was stopped"
        for participant in (stayer, *senders):
            await participant.wait_closed(within=EXIT_DEADLINE)
    return senders, leaver, stayer


async def check_nothing_acked_was_lost(
    server: ServerProcess, senders: list[Participant], leaver: Participant, stayer: Participant
) -> None:
    """After the restart: every acked message at its seq, history gap-free from 1, the same epoch, what
    the stayer saw unchanged, the leaver recovers exactly what it missed, and the next message is N+1."""
    epoch = leaver.welcome["epoch"]
    sent = {text for sender in senders for text in sender.sent.values()}
    acked = {seq: text for sender in senders for seq, text in sender.acked_texts().items()}
    assert len(acked) >= 40, "too few messages acked before the stop to test anything"
    async with joined(server, ROOM, "reader") as (ws, welcome):
        history = await page_history(ws)
        count = len(history)
        assert [message["seq"] for message in history] == list(range(1, count + 1)), "a gap or a duplicate"
        assert (welcome["epoch"], welcome["seq"]) == (epoch, count)
        lost = {seq: text for seq, text in acked.items() if seq > count or history[seq - 1]["text"] != text}
        assert not lost, f"acked, then lost or changed: {lost}"
        texts = [message["text"] for message in history]
        assert set(texts) <= sent, "a message nobody sent"
        assert len(set(texts)) == count, "a message stored twice"
        seen = [message for message in stayer.received if message["type"] == "message"]
        assert seen == history[: len(seen)], "a message delivered before the stop differs from the stored one"

        since = leaver.seqs()[-1]
        async with joined(server, ROOM, "leaver", since=since, epoch=epoch) as (_, again):
            assert again["recovered"] is True
            assert again["history"] == history[since:], "not exactly the messages it missed"
        assert await say(ws, "after the restart") == [count + 1]


async def test_sigterm_while_four_senders_publish_loses_nothing_acked(start_durable: StartServer) -> None:
    """SIGTERM mid-stream, restart in the same folder: every acked message is kept, gap-free, same epoch."""
    first = start_durable()

    async def terminate(senders: list[Participant]) -> None:
        first.terminate()

    senders, leaver, stayer = await stop_while_publishing(first, terminate)
    assert first.wait_exit(0) in STOPPED_BY_SIGTERM, first.log
    await check_nothing_acked_was_lost(start_durable(), senders, leaver, stayer)


async def test_sigkill_with_publishes_in_flight_loses_nothing_acked(start_durable: StartServer) -> None:
    """SIGKILL while publishes await their ack, restart in the same folder: every acked message is kept, gap-free."""
    first = start_durable()

    async def kill_in_flight(senders: list[Participant]) -> None:
        in_flight = IN_FLIGHT_AT_THE_KILL
        await senders[0].wait_until(lambda: sum(sender.in_flight for sender in senders) >= in_flight)
        first.process.kill()  # at once: nothing awaited since the count above

    senders, leaver, stayer = await stop_while_publishing(first, kill_in_flight)
    assert first.wait_exit(0) == -signal.SIGKILL
    await check_nothing_acked_was_lost(start_durable(), senders, leaver, stayer)


# --- the store in use ----------------------------------------------------------------------------


async def test_the_default_store_is_chat_db_in_the_working_directory(
    start_durable: StartServer, tmp_path: Path
) -> None:
    """With no store named, the start-up log names ``chat.db``'s absolute path and /healthz says sqlite on memory."""
    server = start_durable()
    path = tmp_path / DATABASE
    server.wait_log("event=store")
    announced = next(line for line in server.log.splitlines() if "event=store" in line)
    assert str(path) in announced, announced  # pytest's tmp_path is resolved already
    body = await server.healthz()
    assert (body["status"], body["store"], body["backend"]) == ("ok", "sqlite", "memory")
    async with joined(server, ROOM, "ann") as (ann, _):
        assert await say(ann, "written down") == [1]
    assert path.is_file()


# --- paging ------------------------------------------------------------------------------------


async def api_history(server: ServerProcess, before: int | None, limit: int) -> list[Frame]:
    """One page of ``GET /api/rooms/ROOM/history``."""
    params = {"limit": str(limit)} | ({"before": str(before)} if before is not None else {})
    async with httpx.AsyncClient(timeout=WAIT) as client:
        response = await client.get(
            f"http://{server.base}/api/rooms/{ROOM}/history",
            params=params,
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert response.status_code == 200, response.text
    messages: list[Frame] = response.json()["messages"]
    return messages


async def test_thousands_of_messages_page_back_to_seq_1(start_durable: StartServer) -> None:
    """3000 messages: history frames and the operator API page back to seq 1 in full pages, oldest first."""
    server = start_durable(env={"CHAT_API_KEY": KEY})
    texts = [f"entry {index}" for index in range(1, 3001)]
    async with joined(server, ROOM, "scribe") as (scribe, _):
        assert await say(scribe, *texts, within=120) == list(range(1, 3001))
    async with joined(server, ROOM, "reader") as (reader, welcome):
        assert [message["seq"] for message in welcome["history"]] == list(range(2951, 3001))
        paged = await page_history(reader, limit=100)
        assert [(message["seq"], message["text"]) for message in paged] == list(enumerate(texts, 1))

    pages: list[list[Frame]] = []
    before: int | None = None
    with anyio.fail_after(60):
        while before != 1:
            page = await api_history(server, before, 100)
            assert len(page) == 100, [message["seq"] for message in page]
            pages.insert(0, page)
            before = page[0]["seq"]
    assert [message for page in pages for message in page] == paged


# --- retention ---------------------------------------------------------------------------------


async def test_retention_by_count_keeps_the_latest_messages(start_durable: StartServer) -> None:
    """``--retention-messages 10``: history holds the latest 10; a ``since`` older than that is not recovered."""
    server = start_durable(retention_messages=10, history_on_join=5)
    async with joined(server, ROOM, "ann") as (ann, welcome):
        assert await say(ann, *[f"note {index}" for index in range(1, 31)], within=20) == list(range(1, 31))
        assert [message["seq"] for message in await page_history(ann)] == list(range(21, 31))
    epoch = welcome["epoch"]
    async with joined(server, ROOM, "late", since=5, epoch=epoch) as (_, late):
        assert late["recovered"] is False
        assert [message["seq"] for message in late["history"]] == list(range(26, 31))
    async with joined(server, ROOM, "recent", since=25, epoch=epoch) as (_, recent):
        assert recent["recovered"] is True
        assert [message["text"] for message in recent["history"]] == [f"note {index}" for index in range(26, 31)]


async def test_retention_by_age_drops_old_messages_and_the_sequence_goes_on(start_durable: StartServer) -> None:
    """``--retention-seconds 1``: older messages are gone within seconds; the room keeps its seq and epoch."""
    server = start_durable(retention_seconds=1)
    async with joined(server, ROOM, "ann") as (ann, welcome):
        assert await say(ann, "soon gone", "gone too") == [1, 2]
        with anyio.fail_after(20):
            while True:
                if not await page_history(ann):
                    break
                await anyio.sleep(0.2)  # the store prunes on its own clock: nothing to wait on but the history
        assert await say(ann, "fresh") == [3]
    async with joined(server, ROOM, "bob", since=1, epoch=welcome["epoch"]) as (_, bob):
        assert (bob["recovered"], bob["epoch"], bob["seq"]) == (False, welcome["epoch"], 3)


# --- refusals ----------------------------------------------------------------------------------


def assert_refused(result: subprocess.CompletedProcess[str], naming: str) -> None:
    """Exit status 2, one line on stderr that names ``naming``, and no traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert FORBIDDEN_IN_LOG not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("chat: "), lines[0]
    assert naming in lines[0], lines[0]


async def refused(
    tmp_path: Path, flags: dict[str, object], backend_url: str = "memory://"
) -> subprocess.CompletedProcess[str]:
    """Run a server in ``tmp_path`` that should refuse to start, and wait (bounded) for its exit."""
    return await anyio.to_thread.run_sync(lambda: refused_start(backend_url, flags, str(tmp_path)))


async def test_a_store_path_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """A store file in a directory that does not exist: exit 2, one line naming the path."""
    assert_refused(await refused(tmp_path, {"store": "sqlite:///missing/chat.db"}), "missing/chat.db")


async def test_a_store_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A store file under a regular file: exit 2, one line naming the path."""
    (tmp_path / "plain").write_text("not a directory")
    assert_refused(await refused(tmp_path, {"store": "sqlite:///plain/chat.db"}), "plain/chat.db")


async def test_a_corrupt_store_file_is_refused(tmp_path: Path) -> None:
    """A ``chat.db`` that is not a database: exit 2, one line naming the file, and the file left as it was."""
    garbage = b"this is not a SQLite database\n" * 200
    (tmp_path / DATABASE).write_bytes(garbage)
    assert_refused(await refused(tmp_path, {"store": None}), str(tmp_path / DATABASE))
    assert (tmp_path / DATABASE).read_bytes() == garbage


async def test_a_second_server_on_the_same_file_is_refused_and_the_first_serves_on(
    start_durable: StartServer, tmp_path: Path
) -> None:
    """A second server in the same folder exits at once naming the file; the first still serves."""
    first = start_durable()
    async with joined(first, ROOM, "ann") as (ann, _):
        assert await say(ann, "before the second server") == [1]
        assert_refused(await refused(tmp_path, {"store": None}), str(tmp_path / DATABASE))
        assert (await first.healthz())["status"] == "ok"
        assert await say(ann, "after it") == [2]
        async with joined(first, ROOM, "bob") as (_, welcome):
            assert [message["text"] for message in welcome["history"]] == ["before the second server", "after it"]


async def test_two_workers_on_the_default_store_are_refused(tmp_path: Path) -> None:
    """``--workers 2`` with no store named: exit 2 with one line about the workers."""
    assert_refused(await refused(tmp_path, {"store": None, "workers": 2}), "--workers")


async def test_two_workers_on_a_sqlite_store_are_refused(tmp_path: Path) -> None:
    """``--workers 2`` on Redis with a SQLite store: exit 2 with one line saying a SQLite file has one process."""
    flags: dict[str, object] = {"store": "sqlite:///chat.db", "workers": 2}
    assert_refused(await refused(tmp_path, flags, backend_url="redis://127.0.0.1:1/0"), "SQLite")


async def test_an_unknown_store_scheme_is_refused(tmp_path: Path) -> None:
    """``--store foo://x``: exit 2, one line naming the URL."""
    assert_refused(await refused(tmp_path, {"store": "foo://x"}), "foo://x")


async def test_an_unreachable_postgresql_store_is_refused(tmp_path: Path) -> None:
    """A PostgreSQL store nobody answers for: exit 2, one line naming the address, never memory instead."""
    url = "postgresql://postgres@127.0.0.1:1/nodb"
    assert_refused(await refused(tmp_path, {"store": url}), "127.0.0.1:1/nodb")


async def test_a_postgresql_store_with_a_wrong_database_name_is_refused(postgres_url: str, tmp_path: Path) -> None:
    """A PostgreSQL server that answers, without the named database: exit 2, one line naming the database."""
    url = postgres_url.rsplit("/", 1)[0] + "/chat_no_such_database"
    assert_refused(await refused(tmp_path, {"store": url}), "chat_no_such_database")


async def test_a_postgresql_store_with_a_wrong_password_is_refused(tmp_path: Path) -> None:
    """A PostgreSQL server that wants a password, given a wrong one: exit 2, one line, the password never shown."""
    bindir = require_postgres_binaries()
    server = await anyio.to_thread.run_sync(lambda: PostgresServer(bindir, password="the-right-one"))
    try:
        await anyio.to_thread.run_sync(server.start)
        url = f"postgresql://postgres:not-the-password@127.0.0.1:{server.port}/postgres"
        result = await refused(tmp_path, {"store": url})
        assert_refused(result, f"127.0.0.1:{server.port}")
        assert "not-the-password" not in result.stdout + result.stderr
    finally:
        await anyio.to_thread.run_sync(server.remove)
