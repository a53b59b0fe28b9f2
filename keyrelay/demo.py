"""``keyrelay demo``: the gateway on the embedded defaults with a built-in mock upstream and a demo key."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
from decimal import Decimal

import click
import uvicorn

from keyrelay.app import create_app
from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.connections import connection_limits
from keyrelay.http1 import bounded_config
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate
from keyrelay.listen import bind_listener
from keyrelay.logs import setup_logging
from keyrelay.runtime import Runtime
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.mock_upstream import MockOptions, MockUpstream

DEMO_EMAIL = "demo@keyrelay.local"
DEMO_MODELS = (
    ModelConfig(id="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60")),
    ModelConfig(id="gpt-4o", input_per_mtok=Decimal("2.50"), output_per_mtok=Decimal("10.00")),
    ModelConfig(id="text-embedding-3-small", input_per_mtok=Decimal("0.02")),
)
# The same mock speaks Anthropic Messages and Gemini generateContent as well.
ANTHROPIC_MODELS = (
    ModelConfig(
        id="claude-sonnet-4-5",
        input_per_mtok=Decimal("3.00"),
        output_per_mtok=Decimal("15.00"),
        cache_read_per_mtok=Decimal("0.30"),
        cache_write_per_mtok=Decimal("3.75"),
    ),
)
GEMINI_MODELS = (ModelConfig(id="gemini-2.5-flash", input_per_mtok=Decimal("0.30"), output_per_mtok=Decimal("2.50")),)


async def _issue_demo_keys(runtime: Runtime) -> tuple[str, str, str]:
    """(admin management key, API key, portal password) of the demo account, made afresh on every run."""
    actor = Actor.system("demo")
    account = await runtime.accounts.get_by_email(email=DEMO_EMAIL)
    if account is None:
        account = await runtime.account_service.create_account(AccountCreate(email=DEMO_EMAIL), actor=actor)
    password = secrets.token_urlsafe(12)
    await runtime.signin.set_password(account_id=account.id, password=password, verified=True, actor=actor)
    await runtime.signin.set_admin(account_id=account.id, admin=True, actor=actor)
    admin = await runtime.key_service.create(
        account=account, spec=KeyCreate(name="demo-admin"), actor=actor, key_type=KeyType.MANAGEMENT, is_admin=True
    )
    spec = KeyCreate.model_validate(
        {"name": "demo", "limit": 5, "limit_reset": "daily", "rate_limits": {"rpm": 600}, "expires_in_days": 30}
    )
    api = await runtime.key_service.create(account=account, spec=spec, actor=actor)
    return admin.plaintext, api.plaintext, password


def _banner(base: str, api_key: str, admin_key: str, password: str, database: str) -> str:
    return f"""
keyrelay demo is running on {base}  (database: {database}; Ctrl-C to stop)

Portal:           {base}/login
  Email:          {DEMO_EMAIL}
  Password:       {password}   (new on every start; sign-up is open, mail goes to this log)

Demo API key (limit $5/day, 600 rpm, expires in 30 days):
  {api_key}

Try a chat completion:
  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer {api_key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]}}'

The same key speaks Anthropic and Gemini, to any model (claude-sonnet-4-5 and gemini-2.5-flash are served by an
Anthropic and a Gemini upstream here):
  curl {base}/v1/messages -H "x-api-key: {api_key}" -H "Content-Type: application/json" \\
    -d '{{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{{"role":"user","content":"hi"}}]}}'
  curl {base}/v1beta/models/gemini-2.5-flash:generateContent -H "x-goog-api-key: {api_key}" \\
    -H "Content-Type: application/json" -d '{{"contents":[{{"parts":[{{"text":"hi"}}]}}]}}'

Admin management key:
  {admin_key}

Management API:   curl {base}/api/v1/keys -H "Authorization: Bearer {admin_key}"
API reference:    {base}/api/docs   (OpenAPI: {base}/openapi.json)
Your key's view:  curl {base}/v1/key -H "Authorization: Bearer {api_key}"
Metrics:          {base}/metrics
"""


async def _serve(server: uvicorn.Server, sock: socket.socket) -> int:
    """Serve until stopped; the exit code uvicorn chose if the start-up failed (it has logged why), else 0."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # raised inside this task it would escape the event loop with a traceback
        return exc.code if isinstance(exc.code, int) else 1
    return 0


async def _run(settings: Settings, sock: socket.socket) -> int:
    ids = tuple(m.id for m in (*DEMO_MODELS, *ANTHROPIC_MODELS, *GEMINI_MODELS))
    async with MockUpstream(MockOptions(models=ids)) as mock:
        providers = (
            ProviderConfig(name="mock", kind="openai", base_url=mock.base_url, models=DEMO_MODELS),
            ProviderConfig(
                name="mock-anthropic", kind="anthropic", base_url=f"{mock.origin}/v1", models=ANTHROPIC_MODELS
            ),
            ProviderConfig(name="mock-gemini", kind="gemini", base_url=f"{mock.origin}/v1beta", models=GEMINI_MODELS),
        )
        bound = sock.getsockname()[1]
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        base = f"http://{host}:{bound}"
        update = {
            "providers": (*settings.providers, *providers),
            "signup": "open",
            "signup_credit_usd": Decimal(5),
            "public_url": base,
        }
        settings = settings.model_copy(update=update)
        app = create_app(settings)
        config = uvicorn.Config(
            app, host=settings.host, port=bound, lifespan="on", access_log=False, log_config=None, proxy_headers=False
        )
        bounded_config(config, connection_limits(settings))  # the same HTTP protocol and bounds as `serve`
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(_serve(server, sock))
        while not server.started:
            if task.done():
                return task.result()
            await asyncio.sleep(0.02)
        assert app.runtime is not None
        admin_key, api_key, password = await _issue_demo_keys(app.runtime)
        click.echo(_banner(base, api_key, admin_key, password, settings.database_url))
        sys.stdout.flush()
        return await task


def run_demo(settings: Settings) -> None:
    """Run the demo on ``settings.host:settings.port`` until Ctrl-C.

    Raises:
        ListenError: The address cannot be listened on (checked before anything starts).
        SystemExit: With code 3 when the application's start-up failed (uvicorn logs why).
    """
    setup_logging("warning", "text")
    sock = bind_listener(settings.host, settings.port)
    code = 0
    with contextlib.suppress(KeyboardInterrupt):
        code = asyncio.run(_run(settings, sock))
    if code:
        sys.exit(code)
