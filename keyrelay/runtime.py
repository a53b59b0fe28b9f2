"""The process's long-lived objects, built once from Settings and passed down (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from keyrelay.cache.keycache import KeyCache
from keyrelay.cache.loader import StoreLoader
from keyrelay.cache.sync import CacheSync
from keyrelay.clock import Clock, SystemClock
from keyrelay.config import Settings
from keyrelay.keys.spec import usd_to_micros
from keyrelay.mail import Mailer, mailer_from_settings
from keyrelay.services.accounts import AccountService
from keyrelay.services.audit import AuditTrail
from keyrelay.services.keys import KeyService
from keyrelay.services.notifications import Notifier
from keyrelay.services.passwords import Passwords
from keyrelay.services.signin import SigninService
from keyrelay.store.accounts import AccountRepository, GroupRepository
from keyrelay.store.audit import AuditRepository
from keyrelay.store.engine import create_engine, sqlite_threads_finished
from keyrelay.store.keys import KeyRepository
from keyrelay.store.logins import LoginRepository
from keyrelay.store.migrate import upgrade_to_head
from keyrelay.store.notifications import NotificationRepository
from keyrelay.tasks import TaskGroup


@dataclass
class Runtime:
    """Store, repositories, cache and services of one process."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    keys: KeyRepository
    accounts: AccountRepository
    groups: GroupRepository
    audit_log: AuditRepository
    cache: KeyCache
    cache_sync: CacheSync
    key_service: KeyService
    account_service: AccountService
    signin: SigninService
    notifications: NotificationRepository
    notifier: Notifier
    tasks: TaskGroup = field(default_factory=TaskGroup)

    async def close(self) -> None:
        """Stop background work and release the database pool."""
        await self.tasks.close()
        await self.engine.dispose()
        await sqlite_threads_finished()  # a connect that failed (store down) may still be winding down


def known_models(settings: Settings) -> frozenset[str]:
    """Every model id a client may name: bare ids and provider/model forms."""
    names: set[str] = set()
    for provider in settings.providers:
        for model in provider.models:
            names.add(model.id)
            names.add(f"{provider.name}/{model.id}")
    return frozenset(names)


def known_regions(settings: Settings) -> frozenset[str] | None:
    """The regions the configured providers serve; None when no provider is configured."""
    if not settings.providers:
        return None
    return frozenset(p.region for p in settings.providers if p.region is not None)


def public_url(settings: Settings) -> str:
    """The portal's address for emailed links: ``public_url``, else the address keyrelay listens on."""
    if settings.public_url:
        return settings.public_url
    host = "localhost" if settings.host in ("0.0.0.0", "::", "127.0.0.1") else settings.host
    return f"http://{host}:{settings.port}"


async def open_runtime(
    settings: Settings, *, clock: Clock | None = None, migrate: bool = True, mailer: Mailer | None = None
) -> Runtime:
    """Connect to the store (applying migrations) and build the services (``mailer``: from settings when None)."""
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url)
    if migrate:
        try:
            await upgrade_to_head(engine)
        except BaseException:
            # Close the pool (and aiosqlite's worker thread) before the error travels up, so a CLI
            # that exits on it leaves no thread to die noisily at interpreter shutdown.
            await engine.dispose()
            raise
    keys = KeyRepository(engine)
    accounts = AccountRepository(engine)
    groups = GroupRepository(engine)
    audit_log = AuditRepository(engine)
    tasks = TaskGroup()
    mailer = mailer or mailer_from_settings(settings)
    notifications = NotificationRepository(engine)
    audit = AuditTrail(log=audit_log, clock=clock)
    cache = KeyCache(StoreLoader(keys=keys, clock=clock), max_entries=settings.key_cache_size)
    account_service = AccountService(accounts=accounts, groups=groups, cache=cache, clock=clock, audit=audit)
    return Runtime(
        settings=settings,
        clock=clock,
        engine=engine,
        keys=keys,
        accounts=accounts,
        groups=groups,
        audit_log=audit_log,
        cache=cache,
        cache_sync=CacheSync(cache=cache, keys=keys, accounts=accounts, groups=groups, clock=clock),
        key_service=KeyService(
            keys=keys,
            cache=cache,
            clock=clock,
            audit=audit,
            known_models=known_models(settings),
            known_regions=known_regions(settings),
            known_providers=frozenset(p.name for p in settings.providers) or None,
        ),
        account_service=account_service,
        signin=SigninService(
            logins=LoginRepository(engine),
            account_service=account_service,
            passwords=Passwords(),
            mailer=mailer,
            clock=clock,
            audit=audit,
            public_url=public_url(settings),
            signup=settings.signup,
            signup_credit=settings.signup_credit_usd,
            signup_group=settings.signup_group,
            background=lambda send: tasks.spawn(send, name="mail"),
            idle=timedelta(seconds=settings.session_idle_s),
            absolute=timedelta(seconds=settings.session_absolute_s),
        ),
        notifications=notifications,
        tasks=tasks,
        notifier=Notifier(
            repo=notifications,
            mailer=mailer,
            clock=clock,
            public_url=public_url(settings),
            low_balance_micros=usd_to_micros(settings.low_balance_usd),
        ),
    )
