"""The signed-out pages: sign-in and out, sign-up, email verification, password reset (``/login`` ...)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.portal.app import field_of, page_route, portal_of, status_of

router = APIRouter()
page = page_route(router)

_BAD_RESET = {
    "title": "Link not valid",
    "message": "This reset link was used already, has expired (after 30 minutes) or is not one we sent. "
    "Ask for a new one on the Forgot password page.",
}


@page("/", ["GET"])
async def home(request: Request) -> Response:
    """``/``: the API Keys page when signed in, else the sign-in page."""
    portal = portal_of(request)
    signed_in, _ = await portal.current(request)
    return portal.redirect("/keys" if signed_in else "/login")


# --- sign-in and out --------------------------------------------------------------------------


@page("/login", ["GET"])
async def login_form(request: Request) -> Response:
    """``GET /login``: the sign-in form (to ``/keys`` when signed in already)."""
    portal = portal_of(request)
    signed_in, _ = await portal.current(request)
    if signed_in is not None:
        return portal.redirect("/keys")
    seed, new = portal.form_seed(request)
    notice = {"reset": "Your password was changed. Sign in with the new one."}.get(request.query_params.get("done", ""))
    return portal.render(request, "login.html", seed=seed, new_seed=new, notice=notice, email="")


@page("/login", ["POST"])
async def login(request: Request) -> Response:
    """``POST /login``: check the password, open a session, go to ``/keys``; 400 or 429 with the form again."""
    portal = portal_of(request)
    seed = portal.csrf_seed(request)
    form = await portal.checked_form(request, seed)
    if form is None or seed is None:
        return portal.forbidden(request)
    email, password = field_of(form, "email"), field_of(form, "password")
    ip = portal.client_ip(request.scope)
    try:
        session_id, _ = await portal.signin.sign_in(
            email=email,
            password=password,
            ip=str(ip) if ip else "unknown",
            user_agent=request.headers.get("user-agent"),
        )
    except GatewayError as err:
        refused = portal.render(request, "login.html", status=status_of(err), seed=seed, error=err.message, email=email)
        if err.retry_after is not None:
            refused.headers["retry-after"] = str(int(err.retry_after))
        return refused
    response = portal.redirect("/keys")
    portal.set_session(response, session_id)
    return response


@page("/logout", ["POST"])
async def logout(request: Request) -> Response:
    """``POST /logout``: end this session."""
    portal = portal_of(request)
    signed_in, session_id = await portal.current(request)
    if signed_in is None or session_id is None:
        return portal.redirect("/login")
    if await portal.checked_form(request, session_id) is None:
        return portal.forbidden(request)
    await portal.signin.sign_out(session_id)
    response = portal.redirect("/login")
    portal.clear_session(response)
    return response


# --- sign-up and verification -----------------------------------------------------------------


@page("/signup", ["GET"])
async def signup_form(request: Request) -> Response:
    """``GET /signup``: the sign-up form, or 403 when sign-up is not open."""
    portal = portal_of(request)
    seed, new = portal.form_seed(request)
    if portal.signin.signup_mode != "open":
        return portal.render(request, "signup_closed.html", status=403, seed=seed, new_seed=new)
    return portal.render(request, "signup.html", seed=seed, new_seed=new, email="")


@page("/signup", ["POST"])
async def signup(request: Request) -> Response:
    """``POST /signup``: create the account and mail a verification link (the same answer for a known email)."""
    portal = portal_of(request)
    seed = portal.csrf_seed(request)
    form = await portal.checked_form(request, seed)
    if form is None or seed is None:
        return portal.forbidden(request)
    email, password = field_of(form, "email"), field_of(form, "password")
    try:
        await portal.signin.sign_up(email=email, password=password, ip=portal.ip(request))
    except GatewayError as err:
        template = "signup_closed.html" if err.error_type is ErrorType.FORBIDDEN else "signup.html"
        return portal.render(
            request, template, status=status_of(err), seed=seed, error=err.message, error_field=err.field, email=email
        )
    return portal.render(
        request,
        "message.html",
        seed=seed,
        title="Check your email",
        message=f"We sent a link to {email.strip()}. Open it to verify your email, then sign in.",
    )


@page("/verify/{token}", ["GET"])
async def verify_form(request: Request) -> Response:
    """``GET /verify/{token}``: a button that uses the link (a GET changes nothing: mail scanners open links)."""
    portal = portal_of(request)
    # A GET changes nothing: mail scanners open links; the button below uses the link.
    seed, new = portal.form_seed(request)
    return portal.render(request, "verify.html", seed=seed, new_seed=new, token=request.path_params["token"])


@page("/verify/{token}", ["POST"])
async def verify(request: Request) -> Response:
    """``POST /verify/{token}``: with the account's password, mark the email verified, once.

    400 for a used, expired or unknown link, or a wrong password (the form again; the link still works).
    """
    portal = portal_of(request)
    seed = portal.csrf_seed(request)
    form = await portal.checked_form(request, seed)
    if form is None or seed is None:
        return portal.forbidden(request)
    token = str(request.path_params["token"])[:100]
    try:
        ok = await portal.signin.verify_email(token, password=field_of(form, "password"), ip=portal.ip(request))
    except GatewayError as err:
        return portal.render(request, "verify.html", status=400, seed=seed, token=token, error=err.message)
    title, message = (
        ("Email verified", "Your email is verified. You can sign in and create keys.")
        if ok
        else ("Link not valid", "This link was used already, has expired or is not one we sent.")
    )
    return portal.render(request, "message.html", status=200 if ok else 400, seed=seed, title=title, message=message)


# --- password reset ---------------------------------------------------------------------------


@page("/forgot-password", ["GET"])
async def forgot_form(request: Request) -> Response:
    """``GET /forgot-password``: the form asking for the email."""
    portal = portal_of(request)
    seed, new = portal.form_seed(request)
    return portal.render(request, "forgot.html", seed=seed, new_seed=new, email="")


@page("/forgot-password", ["POST"])
async def forgot(request: Request) -> Response:
    """``POST /forgot-password``: mail a reset link if the account exists; the same answer if not."""
    portal = portal_of(request)
    seed = portal.csrf_seed(request)
    form = await portal.checked_form(request, seed)
    if form is None or seed is None:
        return portal.forbidden(request)
    email = field_of(form, "email")
    if not email.strip():
        return portal.render(
            request, "forgot.html", status=400, seed=seed, error="Enter your email.", error_field="email", email=""
        )
    await portal.signin.request_reset(email)
    return portal.render(
        request,
        "message.html",
        seed=seed,
        title="Check your email",
        message="If an account has this email, we sent it a link to reset the password. The link works once, "
        "for 30 minutes.",
    )


@page("/reset/{token}", ["GET"])
async def reset_form(request: Request) -> Response:
    """``GET /reset/{token}``: the new-password form, or 400 when the link cannot be used."""
    portal = portal_of(request)
    seed, new = portal.form_seed(request)
    token = str(request.path_params["token"])[:100]
    if not await portal.signin.reset_usable(token):
        return portal.render(
            request,
            "message.html",
            status=400,
            seed=seed,
            new_seed=new,
            title=_BAD_RESET["title"],
            message=_BAD_RESET["message"],
        )
    return portal.render(request, "reset.html", seed=seed, new_seed=new, token=token)


@page("/reset/{token}", ["POST"])
async def reset(request: Request) -> Response:
    """``POST /reset/{token}``: set the password, once; every session ends; on to ``/login``."""
    portal = portal_of(request)
    seed = portal.csrf_seed(request)
    form = await portal.checked_form(request, seed)
    if form is None or seed is None:
        return portal.forbidden(request)
    token = str(request.path_params["token"])[:100]
    try:
        ok = await portal.signin.reset_password(
            token=token, password=field_of(form, "new_password"), ip=portal.ip(request)
        )
    except GatewayError as err:
        return portal.render(
            request, "reset.html", status=400, seed=seed, token=token, error=err.message, error_field="new_password"
        )
    if not ok:
        return portal.render(
            request, "message.html", status=400, seed=seed, title=_BAD_RESET["title"], message=_BAD_RESET["message"]
        )
    response = portal.redirect("/login?done=reset")
    portal.clear_session(response)
    return response
