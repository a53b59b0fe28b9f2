"""The Usage and Logs pages: ``/usage`` (charts and totals), ``/usage.csv`` (the export), ``/logs`` (request log).

A signed-in account sees its own account's records only, always: every query here is scoped to the
session's account id, whatever the query string says. The pages read what ``GET /api/v1/usage`` and
``GET /api/v1/usage/records`` read (``store/usage.py``), so the dashboard and API users see the same data.
Days are UTC days; "the last 7 days" are today and the six days before it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from keyrelay.fields import EARLIEST, LATEST, check_text, is_key_hash
from keyrelay.keys.format import KeyType
from keyrelay.portal.app import Portal, page_route, visit_of
from keyrelay.portal.charts import Bar, column_chart, ranked_bars
from keyrelay.portal.security import SECURITY_HEADERS
from keyrelay.runtime import Runtime, known_models
from keyrelay.services.signin import SignedIn
from keyrelay.store.usage import StatusFilter, UsageEntry, UsageRepository, UsageSlice

router = APIRouter()
page = page_route(router)

DAYS = (7, 30, 90)
DEFAULT_DAYS = 30
METRICS = {"spend": "Spend", "requests": "Requests", "tokens": "Tokens"}
LOG_PAGE_SIZE = 50
TOP_BARS = 10  # bars per key and per model; the table lists every key
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"^(-?[0-9]{1,18})_([0-9]{1,19})$")
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP)
_MAX_ID = 2**63 - 1


@dataclass(slots=True)
class Sums:
    """Running totals of a set of records."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0

    def add(self, s: UsageSlice) -> None:
        """Add one slice of the breakdown."""
        self.requests += s.requests
        self.errors += s.errors
        self.prompt_tokens += s.prompt_tokens
        self.completion_tokens += s.completion_tokens
        self.cost_micros += s.cost_micros

    @property
    def tokens(self) -> int:
        """Input and output tokens."""
        return self.prompt_tokens + self.completion_tokens

    def metric(self, name: str) -> int:
        """The value charted for ``spend``, ``requests`` or ``tokens``."""
        return {"spend": self.cost_micros, "requests": self.requests, "tokens": self.tokens}[name]


@dataclass(slots=True)
class KeySums:
    """The totals of one key (by hash: two keys may share a name)."""

    key_hash: str
    name: str
    sums: Sums


def _choice(request: Request, name: str, allowed: Iterable[str], default: str) -> str:
    value = request.query_params.get(name, default)
    return value if value in allowed else default


def _period(request: Request, now: datetime) -> tuple[int, list[date], datetime]:
    """The chosen number of days, each day (oldest first) and the start of the first one (UTC)."""
    days = int(_choice(request, "days", (str(d) for d in DAYS), str(DEFAULT_DAYS)))
    today = now.astimezone(UTC).date()
    dates = [today - timedelta(days=days - 1 - i) for i in range(days)]
    return days, dates, datetime.combine(dates[0], datetime.min.time(), tzinfo=UTC)


def _money(portal: Portal) -> Callable[[int], str]:
    money: Callable[[int], str] = portal.env.filters["money"]
    return money


def _count(value: int) -> str:
    return f"{value:,}"


def _day_tick(day: str) -> str:
    parsed = date.fromisoformat(day)
    return f"{parsed:%b} {parsed.day}"


def _summarise(slices: list[UsageSlice]) -> tuple[Sums, dict[str, Sums], list[KeySums], dict[str, Sums]]:
    """The breakdown summed in all, per day, per key (by spend, largest first) and per model."""
    total = Sums()
    by_day: dict[str, Sums] = {}
    by_model: dict[str, Sums] = {}
    by_key: dict[str, KeySums] = {}
    for s in slices:
        total.add(s)
        by_day.setdefault(s.day, Sums()).add(s)
        by_model.setdefault(s.model or "(none)", Sums()).add(s)
        by_key.setdefault(s.key_hash, KeySums(s.key_hash, s.key_name, Sums())).sums.add(s)
    keys = sorted(by_key.values(), key=lambda k: (-k.sums.cost_micros, -k.sums.requests, k.name))
    return total, by_day, keys, by_model


def _top(items: Iterable[tuple[str, Sums]], metric: str) -> list[Bar]:
    bars = [Bar(label, sums.metric(metric)) for label, sums in items]
    return sorted(bars, key=lambda b: (-b.value, b.label))[:TOP_BARS]


def _scope(request: Request, signed_in: SignedIn) -> int | None:
    """The account whose usage is shown: the signed-in one, or every account (None) for an admin's ``scope=all``."""
    if signed_in.account.is_admin and request.query_params.get("scope") == "all":
        return None
    return signed_in.account.id


@page("/usage", ["GET"])
async def usage(request: Request) -> Response:
    """``GET /usage?days=7|30|90&metric=spend|requests|tokens``: totals, charts by day, key and model."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    runtime = portal.runtime
    days, dates, start = _period(request, runtime.clock.now_utc())
    metric = _choice(request, "metric", METRICS, "spend")
    scope = _scope(request, signed_in)
    slices = await UsageRepository(runtime.engine).breakdown(account_id=scope, start=start, end=None)
    total, by_day, keys, by_model = _summarise(slices)
    fmt = _money(portal) if metric == "spend" else _count
    label = METRICS[metric]
    day_bars = [Bar(d.isoformat(), by_day.get(d.isoformat(), Sums()).metric(metric)) for d in dates]
    charts = {
        "by_day": column_chart(
            "chart-days",
            day_bars,
            title=f"{label} per day, last {days} days (UTC)",
            fmt=fmt,
            tick=_day_tick,
            description="Each day's value is in the table below the chart.",
        ),
        "by_key": ranked_bars(
            "chart-keys", _top(((k.name, k.sums) for k in keys), metric), title=f"{label} by key", fmt=fmt
        ),
        "by_model": ranked_bars("chart-models", _top(by_model.items(), metric), title=f"{label} by model", fmt=fmt),
    }
    return portal.render(
        request,
        "usage.html",
        seed=session_id,
        signed_in=signed_in,
        active="usage",
        days=days,
        day_choices=DAYS,
        metric=metric,
        metrics=METRICS,
        total=total,
        keys=keys,
        day_rows=[(bar.label, by_day.get(bar.label, Sums())) for bar in reversed(day_bars)],
        charts=charts,
        start=dates[0],
        has_data=bool(slices),
        more_keys=max(0, len(keys) - TOP_BARS),
        more_models=max(0, len(by_model) - TOP_BARS),
        all_accounts=scope is None,
        scope_query="&scope=all" if scope is None else "",
    )


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with ``= + - @`` (tab, CR) gets a leading quote."""
    text = str(value)
    return "'" + text if text.startswith(_CSV_FORMULA_START) else text


def _usd(micros: int) -> str:
    return f"{Decimal(micros) / Decimal(1_000_000):.6f}"


_CSV_HEADER = (
    "day",
    "key_name",
    "key_hash",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
)


@page("/usage.csv", ["GET"])
async def usage_csv(request: Request) -> Response:
    """``GET /usage.csv?days=7|30|90``: one row per UTC day, key and model, as an attachment."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, _ = got
    runtime = portal.runtime
    days, dates, start = _period(request, runtime.clock.now_utc())
    slices = await UsageRepository(runtime.engine).breakdown(
        account_id=_scope(request, signed_in), start=start, end=None
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_CSV_HEADER)
    for s in slices:
        row = (s.day, s.key_name, s.key_hash, s.model, s.requests, s.errors, s.prompt_tokens, s.completion_tokens)
        more = (s.cache_read_tokens, s.cache_write_tokens, s.reasoning_tokens, _usd(s.cost_micros))
        writer.writerow([csv_cell(v) for v in (*row, *more)])
    filename = f"keyrelay-usage-{dates[0].isoformat()}-to-{dates[-1].isoformat()}.csv"
    headers = {**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{filename}"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


# --- the request log -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogFilters:
    """The filters of ``/logs`` as typed (for the form) and as parsed (for the query)."""

    key: str = ""
    model: str = ""
    status: str = ""
    start: str = ""
    end: str = ""

    def query(self, **extra: str) -> str:
        """The filters (non-empty ones) and ``extra`` as a query string."""
        fields = {"key": self.key, "model": self.model, "status": self.status, "from": self.start, "to": self.end}
        return urlencode({k: v for k, v in {**fields, **extra}.items() if v})


class FilterError(ValueError):
    """A filter of ``/logs`` that cannot be used; ``field`` names the input."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _day_bound(text: str, field: str) -> date | None:
    if not text:
        return None
    try:
        parsed = date.fromisoformat(text)
    except ValueError:
        raise FilterError("Enter a date as YYYY-MM-DD.", field) from None
    if not EARLIEST.date() < parsed < LATEST.date():
        raise FilterError("Enter a date between the years 1 and 9999.", field)
    return parsed


def _filters(request: Request) -> LogFilters:
    """What the form sent, cut to plausible sizes (a value no one typed is dropped, not echoed)."""
    q = request.query_params

    def text(name: str, limit: int) -> str:
        value = q.get(name, "").strip()
        try:
            return check_text(value) if len(value) <= limit else ""
        except ValueError:
            return ""

    key = text("key", 64)
    status = text("status", 5)
    return LogFilters(
        key=key if is_key_hash(key) else "",
        model=text("model", 200),
        status=status if status in ("ok", "error") else "",
        start=text("from", 10),
        end=text("to", 10),
    )


def _range(filters: LogFilters) -> tuple[datetime | None, datetime | None]:
    """``from`` (inclusive) and ``to`` (inclusive: up to the end of that UTC day) as datetimes.

    Raises:
        FilterError: A date that is not YYYY-MM-DD, or ``to`` before ``from``.
    """
    first, last = _day_bound(filters.start, "from"), _day_bound(filters.end, "to")
    if first is not None and last is not None and last < first:
        raise FilterError("The end date is before the start date.", "to")
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC) if first else None
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC) if last else None
    return start, end


def encode_cursor(entry: UsageEntry) -> str:
    """The ``before`` value of the Older link: microseconds since 1970 and the id of the page's last record."""
    micros = (entry.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{entry.id}"


def decode_cursor(text: str) -> tuple[datetime, int] | None:
    """The position ``encode_cursor`` wrote, or None for anything else (the page starts at the newest)."""
    match = _CURSOR.match(text)
    if match is None:
        return None
    record_id = int(match.group(2))
    try:
        created_at = _EPOCH + timedelta(microseconds=int(match.group(1)))
    except OverflowError:
        return None
    if not 1 <= record_id <= _MAX_ID or not EARLIEST <= created_at <= LATEST:
        return None
    return created_at, record_id


async def _key_choices(runtime: Runtime, account_id: int) -> list[tuple[str, str]]:
    """(hash, name) of the account's keys for the key filter, by name."""
    records = await runtime.keys.list_all(account_id=account_id, key_type=KeyType.REGULAR.value, limit=500)
    return sorted(((r.hash, r.name) for r in records), key=lambda pair: (pair[1].lower(), pair[0]))


@page("/logs", ["GET"])
async def logs(request: Request) -> Response:
    """``GET /logs``: the account's requests, newest first, 50 a page; filters key, model, status, from, to."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    runtime = portal.runtime
    filters = _filters(request)
    context: dict[str, Any] = {"rows": [], "older": None}
    status = 200
    try:
        start, end = _range(filters)
    except FilterError as err:
        status, context["error"], context["error_field"] = 400, str(err), err.field
    else:
        before = decode_cursor(request.query_params.get("before", ""))
        wanted: StatusFilter | None = "ok" if filters.status == "ok" else "error" if filters.status else None
        rows = await UsageRepository(runtime.engine).records(
            account_id=signed_in.account.id,
            limit=LOG_PAGE_SIZE + 1,
            before=before,
            key_hash=filters.key or None,
            model=filters.model or None,
            status=wanted,
            start=start,
            end=end,
        )
        context["rows"] = rows[:LOG_PAGE_SIZE]
        if len(rows) > LOG_PAGE_SIZE:
            context["older"] = "/logs?" + filters.query(before=encode_cursor(rows[LOG_PAGE_SIZE - 1]))
        context["paged"] = before is not None
    return portal.render(
        request,
        "logs.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        active="logs",
        filters=filters,
        newest="/logs?" + filters.query(),
        key_choices=await _key_choices(runtime, signed_in.account.id),
        models=sorted(known_models(portal.settings)),
        **context,
    )
