"""The ``keyrelay`` command: serve, migrate, demo, admin …, keys …. Parses input, calls services, prints.

Commands that change keys or accounts write the database directly through the same services the
API uses. With ``KEYRELAY_REDIS_URL`` set they also record the change's state mark in Redis, so running
gateways enforce it on their next request; without Redis they pick it up within their cache poll interval
(1 s by default).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from keyrelay.config import ConfigError, Settings, load_settings
from keyrelay.errors import GatewayError
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import RATE_FIELDS, KeyCreate, KeyUpdate, micros_to_usd
from keyrelay.limits.factory import build_limits, redis_client
from keyrelay.listen import ListenError
from keyrelay.runtime import Runtime, open_runtime
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.services.signin import SigninService
from keyrelay.store.engine import UnsupportedDatabaseError, sqlite_threads_finished
from keyrelay.store.records import AccountRecord

T = TypeVar("T")
CLI = Actor.cli()  # every change made by a command is recorded in the audit log as the CLI's

# Exit codes, documented in the README's CLI section.
EXIT_FAILED = 1  # the command could not be carried out: database unreachable, no such key, conflict
EXIT_BAD_INPUT = 2  # bad input or configuration (click's own usage errors exit with 2 as well)
EXIT_CANNOT_START = 3  # serve or demo could not start: cannot listen on the address, or start-up failed


def _out(line: str = "") -> None:
    click.echo(line)


def _warn(warnings: tuple[str, ...]) -> None:
    """Print the services' warnings (accepted input that cannot work yet) on stderr, one per line."""
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def friendly(func: Callable[..., T]) -> Callable[..., T]:
    """Turn user mistakes and unreachable services into one-line errors instead of tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            _fail(f"{where}: {str(first['msg']).removeprefix('Value error, ')}", EXIT_BAD_INPUT)
        except GatewayError as exc:
            _fail(exc.message)
        except ListenError as exc:
            _fail(str(exc), EXIT_CANNOT_START)
        except (UnsupportedDatabaseError, ArgumentError) as exc:
            _fail(f"invalid database URL: {str(exc).splitlines()[0][:200]}", EXIT_BAD_INPUT)
        except (OperationalError, OSError) as exc:
            _fail(f"cannot reach the database: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
        except DBAPIError as exc:
            # e.g. PostgreSQL: the database or role does not exist.
            _fail(f"database error: {str(exc.orig or exc).splitlines()[0][:200]}")
        raise AssertionError("unreachable")

    return wrapper


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings_factory"]()
    return settings


def _with_runtime(ctx: click.Context, job: Callable[[Runtime], Awaitable[T]]) -> T:
    settings = _settings(ctx)

    async def run() -> T:
        try:
            runtime = await open_runtime(settings)
        except BaseException:
            await sqlite_threads_finished()
            raise
        limits = build_limits(settings, redis_client(settings))  # Redis only records state marks here
        runtime.cache.marker = limits.mark
        try:
            return await job(runtime)
        finally:
            await limits.close()
            await runtime.close()

    return asyncio.run(run())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="keyrelay.yaml (or KEYRELAY_CONFIG).")
@click.option("--database-url", help="Overrides KEYRELAY_DATABASE_URL.")
@click.version_option(package_name="keyrelay")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, database_url: str | None) -> None:
    """keyrelay: an LLM API gateway with per-key budgets, limits and access rules."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file

    def factory(override_config: str | None = None, **kw: Any) -> Settings:
        return load_settings(override_config or config_file, database_url=database_url, **kw)

    ctx.obj["settings_factory"] = factory


@cli.command()
@click.option("--host", help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default 8080).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="keyrelay.yaml.")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default 1, or KEYRELAY_WORKERS).")
@click.pass_context
@friendly
def serve(ctx: click.Context, host: str | None, port: int | None, config_file: str | None, workers: int | None) -> None:
    """Run the gateway."""
    from keyrelay.server import serve_forever

    settings = ctx.obj["settings_factory"](config_file, host=host, port=port, workers=workers)
    if settings.workers > 1 and not settings.redis_url:
        _fail(
            f"--workers {settings.workers} needs KEYRELAY_REDIS_URL: without Redis each worker would keep its own "
            "rate and spend counters (multiplying every limit by the number of workers) and its own key cache. "
            "Set KEYRELAY_REDIS_URL, or run one worker.",
            EXIT_BAD_INPUT,
        )
    serve_forever(settings)


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="keyrelay.yaml.")
@click.option("--pid-file", type=click.Path(dir_okay=False), help="Where serve wrote its pid (KEYRELAY_PID_FILE).")
@click.pass_context
@friendly
def reload(ctx: click.Context, config_file: str | None, pid_file: str | None) -> None:
    """Check keyrelay.yaml, then have the running serve reload it (SIGHUP to the pid in KEYRELAY_PID_FILE)."""
    import os
    import signal

    settings = ctx.obj["settings_factory"](config_file)  # a bad file stops here, with the error, before any signal
    path = pid_file or (str(settings.pid_file) if settings.pid_file else None)
    if path is None:
        _fail(
            "keyrelay reload needs the pid file serve writes: set KEYRELAY_PID_FILE (or pass --pid-file)",
            EXIT_BAD_INPUT,
        )
        return
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read the pid file {path}: {getattr(exc, 'strerror', None) or exc}; is keyrelay serve running?")
        return
    if not text.isdigit() or int(text) <= 1:
        _fail(f"the pid file {path} does not hold a process id")
        return
    try:
        os.kill(int(text), signal.SIGHUP)
    except ProcessLookupError:
        _fail(f"no process {text} (from {path}): keyrelay serve is not running")
        return
    except PermissionError:
        _fail(f"not allowed to signal process {text} (from {path}): run as the user running keyrelay serve")
        return
    _out(f"{path}: sent SIGHUP to keyrelay serve (pid {text}); its log says whether the new file was taken")


@cli.command()
@click.pass_context
@friendly
def migrate(ctx: click.Context) -> None:
    """Apply database migrations (serve does this too at start-up)."""
    settings = _settings(ctx)

    async def job(_: Runtime) -> None:
        return None

    _with_runtime(ctx, job)
    _out(f"database at {_safe_url(settings.database_url)} is up to date")


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default 8080, or KEYRELAY_PORT).")
@click.option("--host", help="Interface to listen on (default 127.0.0.1, or KEYRELAY_HOST).")
@click.pass_context
@friendly
def demo(ctx: click.Context, port: int | None, host: str | None) -> None:
    """Start the gateway with a built-in mock upstream and print a working demo key."""
    from keyrelay.demo import run_demo

    run_demo(ctx.obj["settings_factory"](host=host, port=port))


# --- admin -----------------------------------------------------------------------------------------------


@cli.group()
def admin() -> None:
    """Accounts, groups and management keys."""


async def _account(runtime: Runtime, email: str) -> AccountRecord:
    account = await runtime.accounts.get_by_email(email=email)
    if account is None:
        raise GatewayError(
            _not_found(), f"no account with email {email!r}; create it with: keyrelay admin create-account {email}"
        )
    return account


def _not_found() -> Any:
    from keyrelay.errors import ErrorType

    return ErrorType.NOT_FOUND


def _password_from_stdin() -> str:
    """The password piped on standard input: everything read, less one trailing line break."""
    password = sys.stdin.read()
    password = password.removesuffix("\n").removesuffix("\r")
    if not password:
        _fail("--password-stdin: standard input held no password", EXIT_BAD_INPUT)
    try:
        SigninService.check_password(password)
    except GatewayError as exc:
        _fail(f"--password-stdin: {exc.message}", EXIT_BAD_INPUT)
    return password


@admin.command("create-account")
@click.argument("email")
@click.option("--group", help="Group name.")
@click.option("--balance", type=Decimal, help="Prepaid balance in USD (default: unlimited).")
@click.option(
    "--password-stdin", is_flag=True, help="Read a portal password from standard input; the email counts as verified."
)
@click.option("--admin", "is_admin", is_flag=True, help="The account's portal sessions may act as an admin.")
@click.pass_context
@friendly
def create_account(
    ctx: click.Context, email: str, group: str | None, balance: Decimal | None, password_stdin: bool, is_admin: bool
) -> None:
    """Create an account (with a portal password when --password-stdin is given)."""
    spec = AccountCreate(email=email, group=group, balance=balance)
    password = _password_from_stdin() if password_stdin else None

    async def job(rt: Runtime) -> AccountRecord:
        account = await rt.account_service.create_account(spec, actor=CLI)
        if password is not None:
            await rt.signin.set_password(account_id=account.id, password=password, verified=True, actor=CLI)
        if is_admin:
            await rt.signin.set_admin(account_id=account.id, admin=True, actor=CLI)
        return account

    account = _with_runtime(ctx, job)
    bal = "unlimited" if account.balance_micros is None else f"${micros_to_usd(account.balance_micros):,.6f}"
    extras = (", portal password set" if password is not None else "") + (", admin" if is_admin else "")
    _out(f"created account {account.id} {account.email} (balance {bal}{extras})")


@admin.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, required=True, help="Read the new password from standard input.")
@click.pass_context
@friendly
def set_password(ctx: click.Context, email: str, password_stdin: bool) -> None:
    """Set an account's portal password (the email counts as verified; its sessions end)."""
    password = _password_from_stdin()

    async def job(rt: Runtime) -> None:
        account = await _account(rt, email)
        await rt.signin.set_password(account_id=account.id, password=password, verified=True, actor=CLI)

    _with_runtime(ctx, job)
    _out(f"password set for {email}; its portal sessions were signed out")


@admin.command("create-group")
@click.argument("name")
@click.option("--price-multiplier", type=Decimal, help="Multiplies every price for the group's accounts.")
@click.option("--allowed-models", help="Comma-separated default model whitelist.")
@click.pass_context
@friendly
def create_group(ctx: click.Context, name: str, price_multiplier: Decimal | None, allowed_models: str | None) -> None:
    """Create a group."""
    values: dict[str, Any] = {"name": name}
    if price_multiplier is not None:
        values["price_multiplier"] = price_multiplier
    if allowed_models:
        values["allowed_models"] = _csv(allowed_models)
    spec = GroupCreate(**values)

    async def job(rt: Runtime) -> str:
        return (await rt.account_service.create_group(spec, actor=CLI)).name

    _out(f"created group {_with_runtime(ctx, job)}")


@admin.command("create-management-key")
@click.option("--account", "email", required=True, help="Owner's email.")
@click.option("--admin", "is_admin", is_flag=True, help="May also manage accounts, groups and every key.")
@click.option("--name", default="management", show_default=True)
@click.pass_context
@friendly
def create_management_key(ctx: click.Context, email: str, is_admin: bool, name: str) -> None:
    """Create a management key (printed once)."""
    spec = KeyCreate(name=name)

    async def job(rt: Runtime) -> tuple[str, tuple[str, ...]]:
        account = await _account(rt, email)
        issued = await rt.key_service.create(
            account=account, spec=spec, key_type=KeyType.MANAGEMENT, is_admin=is_admin, actor=CLI
        )
        return issued.plaintext, issued.warnings

    plaintext, warnings = _with_runtime(ctx, job)
    _out(plaintext)
    click.echo("store this key now: it is not shown again", err=True)
    _warn(warnings)


@admin.command("list-management-keys")
@click.option("--account", "email", help="Only this account's management keys.")
@click.pass_context
@friendly
def list_management_keys(ctx: click.Context, email: str | None) -> None:
    """List management keys (hash, display form, name, admin flag)."""

    async def job(rt: Runtime) -> list[str]:
        account_id = (await _account(rt, email)).id if email else None
        rows = await rt.keys.list_all(account_id=account_id, key_type=KeyType.MANAGEMENT.value, limit=10_000)
        return [
            f"{r.hash}  {r.display:<20} {r.name:<24} account={r.account_id} {'admin' if r.is_admin else 'scoped'}"
            f"{' disabled' if r.disabled else ''}"
            for r in rows
        ]

    lines = _with_runtime(ctx, job)
    for line in lines:
        _out(line)
    if not lines:
        _out("no management keys")


@admin.command("revoke-management-key")
@click.argument("key_hash")
@click.pass_context
@friendly
def revoke_management_key(ctx: click.Context, key_hash: str) -> None:
    """Delete a management key for good (refused on the next request with Redis, else within the poll interval)."""

    async def job(rt: Runtime) -> None:
        record = await rt.keys.get(key_hash=key_hash)
        if record is None or record.key_type != KeyType.MANAGEMENT.value:
            raise GatewayError(
                _not_found(), f"no management key with hash {key_hash!r} (see: admin list-management-keys)"
            )
        await rt.key_service.revoke(record=record, actor=CLI)

    _with_runtime(ctx, job)
    _out(f"revoked {key_hash}")


# --- keys ------------------------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """API keys (works on the database directly)."""


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@keys.command("list")
@click.option("--account", "email", help="Only this account's keys.")
@click.pass_context
@friendly
def keys_list(ctx: click.Context, email: str | None) -> None:
    """List API keys."""

    async def job(rt: Runtime) -> list[str]:
        account_id = (await _account(rt, email)).id if email else None
        rows = await rt.keys.list_all(account_id=account_id, key_type=KeyType.REGULAR.value, limit=10_000)
        lines = []
        for r in rows:
            limit = "-" if not r.limit_micros else f"${micros_to_usd(r.limit_micros):g}/{r.limit_reset or 'total'}"
            state = "disabled" if r.disabled else "active"
            lines.append(
                f"{r.hash}  {r.display:<20} {r.name:<24} {state:<8} limit={limit} usage=${r.usage_micros / 1e6:g}"
            )
        return lines

    lines = _with_runtime(ctx, job)
    for line in lines:
        _out(line)
    if not lines:
        _out("no keys")


@keys.command("create")
@click.option("--account", "email", required=True, help="Owner's email.")
@click.option("--name", required=True)
@click.option("--limit", type=Decimal, help="Spend limit in USD (0 = unlimited).")
@click.option("--limit-reset", type=click.Choice(["daily", "weekly", "monthly"]))
@click.option("--expires-in-days", type=int)
@click.option("--allowed-models", help="Comma-separated model ids.")
@click.option("--allowed-providers", help="Comma-separated provider names.")
@click.option("--ip-allowlist", help="Comma-separated CIDRs.")
@click.option("--ip-denylist", help="Comma-separated CIDRs.")
@click.option("--rpm", type=int, help="Requests per minute.")
@click.option("--per-5h", type=int, help="Requests per 5 hours.")
@click.option("--per-1d", type=int, help="Requests per day.")
@click.option("--per-7d", type=int, help="Requests per 7 days.")
@click.option("--tpm", type=int, help="Tokens per minute.")
@click.option("--max-concurrent", type=int, help="Requests in flight.")
@click.option("--region", help="Pin the key to providers of this region.")
@click.pass_context
@friendly
def keys_create(ctx: click.Context, email: str, **fields: Any) -> None:
    """Create an API key (printed once). Limits left out inherit the group's defaults."""
    rates = {name: fields.pop(name) for name in RATE_FIELDS if fields.get(name) is not None}
    values: dict[str, Any] = {k: v for k, v in fields.items() if v is not None and k not in RATE_FIELDS}
    for name in ("allowed_models", "allowed_providers", "ip_allowlist", "ip_denylist"):
        if name in values:
            values[name] = _csv(values[name])
    if rates:
        values["rate_limits"] = rates
    spec = KeyCreate(**values)

    async def job(rt: Runtime) -> tuple[str, str, tuple[str, ...]]:
        issued = await rt.key_service.create(account=await _account(rt, email), spec=spec, actor=CLI)
        return issued.plaintext, issued.record.hash, issued.warnings

    plaintext, key_hash, warnings = _with_runtime(ctx, job)
    _out(plaintext)
    click.echo(f"hash {key_hash}; store this key now: it is not shown again", err=True)
    _warn(warnings)


def _key_job(hash_: str, action: Callable[[Runtime, Any], Coroutine[Any, Any, T]]) -> Callable[[Runtime], Awaitable[T]]:
    async def job(rt: Runtime) -> T:
        record = await rt.keys.get(key_hash=hash_)
        if record is None or record.key_type != KeyType.REGULAR.value:
            raise GatewayError(_not_found(), f"no API key with hash {hash_!r} (see: keyrelay keys list)")
        return await action(rt, record)

    return job


@keys.command("revoke")
@click.argument("key_hash")
@click.pass_context
@friendly
def keys_revoke(ctx: click.Context, key_hash: str) -> None:
    """Delete an API key for good."""

    async def action(rt: Runtime, record: Any) -> None:
        await rt.key_service.revoke(record=record, actor=CLI)

    _with_runtime(ctx, _key_job(key_hash, action))
    _out(f"revoked {key_hash}")


@keys.command("rotate")
@click.argument("key_hash")
@click.option("--grace-seconds", type=click.IntRange(0, 30 * 86400), default=0, show_default=True)
@click.pass_context
@friendly
def keys_rotate(ctx: click.Context, key_hash: str, grace_seconds: int) -> None:
    """Give an API key a new secret (printed once); the old one works for --grace-seconds."""

    async def action(rt: Runtime, record: Any) -> str:
        return (await rt.key_service.rotate(record=record, grace_seconds=grace_seconds, actor=CLI)).plaintext

    _out(_with_runtime(ctx, _key_job(key_hash, action)))
    click.echo("store this key now: it is not shown again", err=True)


def _set_disabled(ctx: click.Context, key_hash: str, disabled: bool) -> None:
    async def action(rt: Runtime, record: Any) -> tuple[str, ...]:
        _, warnings = await rt.key_service.update(record=record, spec=KeyUpdate(disabled=disabled), actor=CLI)
        return warnings

    warnings = _with_runtime(ctx, _key_job(key_hash, action))
    _out(f"{'disabled' if disabled else 'enabled'} {key_hash}")
    _warn(warnings)


@keys.command("disable")
@click.argument("key_hash")
@click.pass_context
@friendly
def keys_disable(ctx: click.Context, key_hash: str) -> None:
    """Disable an API key (reversible with keys enable)."""
    _set_disabled(ctx, key_hash, True)


@keys.command("enable")
@click.argument("key_hash")
@click.pass_context
@friendly
def keys_enable(ctx: click.Context, key_hash: str) -> None:
    """Re-enable a disabled API key."""
    _set_disabled(ctx, key_hash, False)


def main() -> None:
    """Entry point of the ``keyrelay`` script."""
    cli(obj={})
