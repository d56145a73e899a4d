"""The `cancellations` subcommands that talk to the running system, printed with rich.

Each returns the process's exit code: 0 done, 1 the system answered no (a rejection, a refused
replay), 2 the input is wrong, 3 nothing answered in time.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .. import topics
from . import demo as demo_mod
from . import dlq, practice, readapi, report
from .bus import OBSERVER, connection_as, open_bus, open_reader, writer_of
from .summaries import summarise

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

OUTBOUND = (
    topics.BOOKING_EVENTS,
    topics.POLICY_DECISIONS,
    topics.PRACTICE_EVENTS,
    topics.SCORING_EVENTS,
    topics.BILLING_EVENTS,
    topics.NOTIFICATION_EVENTS,
    topics.PMS_SYNC_EVENTS,
    *topics.PMS_INTEGRATION_TOPICS.values(),
)


# --- practice apply ----------------------------------------------------------------------------


async def practice_apply(path: Path, client: str | None, timeout: float) -> int:
    try:
        settings = practice.load_settings(path)
    except (practice.SettingsError, OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]not sent:[/] {exc}")
        return 2
    # The answer is read as the observer (or the named client); the settings go as upstream.
    conn = writer_of(topics.UPSTREAM_PRACTICES, client)
    answer = await practice.apply(conn, settings, reader_conn=connection_as(OBSERVER, client), timeout=timeout)
    if answer is None:
        err.print(f"[yellow]sent; no answer within {timeout:.0f} s[/] (is cancellation-policy running?)")
        return 3
    data = answer["data"]
    if answer["type"] == "practice.configuration_accepted":
        out.print(
            f"[green]accepted[/]: practice {data['practice_id']} now runs policy version {data['policy_version']}"
        )
        return 0
    out.print(f"[red]rejected[/]: practice {data['practice_id']}: {data.get('message', data.get('reason'))}")
    return 1


# --- dead letters --------------------------------------------------------------------------------


async def dlq_list(services: list[str] | None, client: str | None) -> int:
    letters = await dlq.list_letters(connection_as(OBSERVER, client), services)
    table = Table(title=f"dead letters ({len(letters)})")
    for column in ("id", "dead-lettered at", "original", "key", "bytes", "error"):
        table.add_column(column, overflow="fold")
    for dead in letters:
        letter = dead.letter
        if letter is None:
            table.add_row(dead.id, "", "(unreadable)", "", "", "")
            continue
        table.add_row(
            dead.id,
            letter.dead_lettered_at.isoformat()[:19],
            f"{letter.original_topic}:{letter.original_partition}:{letter.original_offset}",
            letter.original_key or "",
            str(letter.original_value_length or 0) + (" (prefix kept)" if letter.original_value_truncated else ""),
            letter.error[:120],
        )
    out.print(table)
    return 0


async def dlq_show(letter_id: str, client: str | None) -> int:
    try:
        dead = await dlq.find_letter(connection_as(OBSERVER, client), letter_id)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        return 2
    if dead is None or dead.letter is None:
        err.print(f"no readable dead letter {letter_id}")
        return 1
    # An operator's view of one message: the whole dead letter, original included.
    out.print_json(json.dumps(dead.letter.to_json_dict()))
    return 0


async def dlq_replay(letter_id: str, client: str | None) -> int:
    try:
        dead = await dlq.find_letter(connection_as(OBSERVER, client), letter_id)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        return 2
    if dead is None:
        err.print(f"no dead letter {letter_id}")
        return 1
    try:
        topic, _, _ = dlq.replay_target(dead)
        topic, partition, offset = await dlq.replay(writer_of(topic, client), dead)
    except dlq.NotReplayable as exc:
        err.print(f"[red]not replayed:[/] {exc}")
        return 1
    out.print(f"[green]replayed[/] {letter_id} to {topic} partition {partition} offset {offset}")
    return 0


# --- events tail -------------------------------------------------------------------------------


async def events_tail(chosen: list[str] | None, from_beginning: bool, limit: int | None, client: str | None) -> int:
    watched = chosen or list(OUTBOUND)
    unknown = [t for t in watched if t not in topics.ALL_TOPICS]
    if unknown:
        err.print(f"[red]unknown topic(s)[/] {', '.join(unknown)}")
        return 2
    shown = 0
    async with open_reader(connection_as(OBSERVER, client), watched, from_beginning=from_beginning) as reader:
        err.print(f"following {len(watched)} topic(s); Ctrl-C stops")
        while limit is None or shown < limit:
            for record in await reader.batch(1000):
                out.print(summarise(record.topic, record.value), soft_wrap=True)
                shown += 1
                if limit is not None and shown >= limit:
                    break
    return 0


# --- report --------------------------------------------------------------------------------------


async def report_rates(days: int, group_by: str, practice_id: str | None, token: str | None) -> int:
    now = datetime.now(UTC)
    bearer = token or readapi.development_token(["ops"])
    url = readapi.service_urls()["booking"]
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            answer = await report.fetch_report(
                client,
                url,
                bearer,
                starts_from=now - timedelta(days=days),
                starts_before=now + timedelta(days=days),
                group_by=group_by,
                practice_id=practice_id,
            )
        except httpx.HTTPError as exc:
            err.print(f"[red]booking's read API at {url} did not answer:[/] {type(exc).__name__} {exc}")
            return 3
    table = Table(title=f"cancellations by {group_by}, appointments {days} days either side of now")
    table.add_column("practice")
    table.add_column(group_by if group_by != "practice" else "")
    for _, heading in report.COLUMNS:
        table.add_column(heading, justify="right")
    for row in report.rows(answer):
        table.add_row(*row)
    out.print(table)
    return 0


# --- demo ------------------------------------------------------------------------------------------


async def demo(client: str | None, wait: float) -> int:
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    morning = demo_mod.morning(now, run)
    ids = {c.booking_id for c in morning.cases}
    watch = [
        topics.BOOKING_EVENTS,
        topics.BILLING_EVENTS,
        topics.NOTIFICATION_EVENTS,
        topics.SCORING_EVENTS,
        topics.PMS_SYNC_EVENTS,
    ]
    out.rule(f"cancellations demo, run {run}")
    # 1. The practices' settings, each waited for (the policy must know them before any request).
    for p in morning.practices:
        answer = await practice.apply(
            writer_of(topics.UPSTREAM_PRACTICES, client), p, reader_conn=connection_as(OBSERVER, client), timeout=wait
        )
        if answer is None or answer["type"] != "practice.configuration_accepted":
            err.print(f"[red]practice {p.practice_id} was not accepted[/]: {answer and answer['data']}")
            return 3 if answer is None else 1
        out.print(f"configured [bold]{p.name}[/] ({p.practice_id}), policy version {answer['data']['policy_version']}")
    await asyncio.sleep(2)  # booking and notification read the same settings on their own
    async with open_reader(connection_as(OBSERVER, client), watch) as reader:
        upstream = writer_of(topics.UPSTREAM_BOOKINGS, client)
        async with open_bus(upstream) as bus:
            for send in demo_mod.first_sends(morning)[len(morning.practices) :]:
                await bus.event(send.topic, send.payload, subject=send.subject, source=demo_mod.SOURCE)
            out.print(f"scheduled {len(morning.cases)} bookings, 1 patient on the waitlist")
            await asyncio.sleep(2)
            for case in morning.cases:
                for send in case.requests:
                    await bus.event(send.topic, send.payload, subject=send.subject, source=demo_mod.SOURCE)
        outcomes: dict[str, str] = {}
        followups: dict[str, list[str]] = defaultdict(list)
        excused = False
        with Progress(transient=True, console=out) as progress:
            task = progress.add_task("waiting for the services", total=len(morning.cases))
            deadline = asyncio.get_running_loop().time() + wait
            settle_until: float | None = None
            while asyncio.get_running_loop().time() < (settle_until or deadline):
                for record in await reader.batch(500):
                    _collect(record.value, ids, outcomes, followups)
                progress.update(task, completed=len(outcomes))
                if not excused and any(
                    o.startswith("cancelled, late") for b, o in outcomes.items() if b.endswith("-6")
                ):
                    excuser = writer_of(topics.UPSTREAM_PROFESSIONALS, client)
                    async with open_bus(excuser) as bus:
                        for send in morning.excuses:
                            await bus.event(send.topic, send.payload, subject=send.subject, source=demo_mod.SOURCE)
                    excused = True
                if len(outcomes) == len(morning.cases) and settle_until is None:
                    settle_until = asyncio.get_running_loop().time() + 8  # fees, messages and syncs follow
    _print_morning(morning, outcomes, followups, excused)
    return 0 if len(outcomes) == len(morning.cases) else 3


def _collect(value: bytes | None, ids: set[str], outcomes: dict[str, str], followups: dict[str, list[str]]) -> None:
    try:
        envelope = json.loads(value or b"")
        kind, data = envelope["type"], envelope["data"]
    except (ValueError, KeyError, TypeError):
        return
    booking_id = data.get("booking_id") if isinstance(data, dict) else None
    if booking_id not in ids:
        return
    if kind in demo_mod.OUTCOMES:
        outcomes[booking_id] = demo_mod.outcome_line(kind, data)
    elif kind in ("notification.sent", "notification.failed"):
        followups[booking_id].append(f"{kind.split('.')[1]} {data.get('channel')} to {data.get('recipient')}")
    else:
        followups[booking_id].append(kind)


def _print_morning(morning: Any, outcomes: dict[str, str], followups: dict[str, list[str]], excused: bool) -> None:
    table = Table(title="the morning", show_lines=True)
    for column in ("booking", "what happened", "outcome", "then", "expected"):
        table.add_column(column, overflow="fold")
    for case in morning.cases:
        table.add_row(
            case.booking_id,
            case.title,
            outcomes.get(case.booking_id, "[yellow]no answer yet[/]"),
            "\n".join(sorted(set(followups.get(case.booking_id, [])))),
            case.expect,
        )
    out.print(table)
    if excused:
        out.print("an excuse was submitted for the late professional cancellation: approve or reject it in the console")
    urls = readapi.service_urls()
    out.print(
        "\n[bold]where to look[/]\n"
        "  console       http://127.0.0.1:8010  (sign in with `cancellations token --role ops`)\n"
        "  mail caught   http://127.0.0.1:8025\n"
        "  SMS caught    http://127.0.0.1:8026\n"
        f"  read APIs     {urls['booking']}/bookings/{morning.cases[0].booking_id} and the other services\n"
        "  events        cancellations events tail --from-beginning\n"
        "  dead letters  cancellations dlq list"
    )
