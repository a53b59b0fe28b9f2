"""The admin pages for groups (``/admin/groups``) and for the configured providers and models (``/admin/providers``).

Groups hold the defaults of their accounts' keys, model and provider ceilings, a shared quota and a price
multiplier; they change through ``services/accounts.py`` with the signed-in admin as the actor. Providers
and their prices come from ``keyrelay.yaml`` and are shown read-only (never a credential).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from keyrelay.errors import GatewayError
from keyrelay.portal.app import Portal, admin_post_of, admin_visit_of, page_route, row_id_of
from keyrelay.portal.group_form import GROUP_FIELDS, group_create, group_form_values, group_update, group_values
from keyrelay.services.signin import SignedIn
from keyrelay.store.records import GroupRecord

router = APIRouter()
page = page_route(router)


async def _groups_page(
    request: Request, portal: Portal, signed_in: SignedIn, session_id: str, *, status: int = 200, **context: Any
) -> Response:
    runtime = portal.runtime
    groups = await runtime.groups.list_all()
    members = {g.id: await runtime.groups.member_count(group_id=g.id) for g in groups}
    context.setdefault("values", {})
    return portal.render(
        request,
        "admin_groups.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        active="admin",
        groups=groups,
        members=members,
        fields=GROUP_FIELDS,
        **context,
    )


@page("/admin/groups", ["GET"])
async def groups_list(request: Request) -> Response:
    """``GET /admin/groups``: every group with its defaults, quota and member count; the Create group dialog."""
    got = await admin_visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    notice = {"deleted": "The group was deleted."}.get(request.query_params.get("done", ""))
    return await _groups_page(request, portal, signed_in, session_id, notice=notice)


@page("/admin/groups", ["POST"])
async def groups_create(request: Request) -> Response:
    """``POST /admin/groups``: create a group from the dialog (400: the dialog again, naming the field)."""
    got = await admin_post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    try:
        spec = group_create(form)
        group = await portal.runtime.account_service.create_group(spec, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _groups_page(
            request,
            portal,
            signed_in,
            session_id,
            status=err.status if err.status < 500 else 400,
            error=err.message,
            error_field=err.field,
            values=group_form_values(form),
            open_dialog=True,
        )
    return portal.redirect(f"/admin/groups/{group.id}?done=created")


async def _group(request: Request, portal: Portal) -> GroupRecord | None:
    group_id = row_id_of(request, "group_id")
    return None if group_id is None else await portal.runtime.groups.get(group_id=group_id)


async def _group_page(
    request: Request,
    portal: Portal,
    signed_in: SignedIn,
    session_id: str,
    group: GroupRecord,
    *,
    status: int = 200,
    **context: Any,
) -> Response:
    runtime = portal.runtime
    context.setdefault("values", group_values(group))
    return portal.render(
        request,
        "admin_group.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        active="admin",
        group=group,
        members=await runtime.groups.member_count(group_id=group.id),
        entries=await runtime.audit_log.page(limit=20, target_type="group", target_id=str(group.id)),
        fields=GROUP_FIELDS,
        **context,
    )


@page("/admin/groups/{group_id}", ["GET"])
async def group_detail(request: Request) -> Response:
    """``GET /admin/groups/{id}``: the group's settings, editable, and its history."""
    got = await admin_visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    group = await _group(request, portal)
    if group is None:
        return portal.not_found(request, signed_in, session_id)
    notice = {
        "created": "The group was created.",
        "saved": "Saved. Its accounts' keys follow it on their next request.",
    }
    return await _group_page(
        request, portal, signed_in, session_id, group, notice=notice.get(request.query_params.get("done", ""))
    )


@page("/admin/groups/{group_id}/edit", ["POST"])
async def group_edit(request: Request) -> Response:
    """``POST /admin/groups/{id}/edit``: set every field of the group from the form (empty clears it)."""
    got = await admin_post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    group = await _group(request, portal)
    if group is None:
        return portal.not_found(request, signed_in, session_id)
    try:
        spec = group_update(form)
        await portal.runtime.account_service.update_group(group, spec, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _group_page(
            request,
            portal,
            signed_in,
            session_id,
            group,
            status=err.status if err.status < 500 else 400,
            error=err.message,
            error_field=err.field,
            values=group_form_values(form),
        )
    return portal.redirect(f"/admin/groups/{group.id}?done=saved")


@page("/admin/groups/{group_id}/delete", ["POST"])
async def group_delete(request: Request) -> Response:
    """``POST /admin/groups/{id}/delete``: delete a group no account belongs to (409 otherwise)."""
    got = await admin_post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, _ = got
    group = await _group(request, portal)
    if group is None:
        return portal.not_found(request, signed_in, session_id)
    try:
        await portal.runtime.account_service.delete_group(group, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _group_page(request, portal, signed_in, session_id, group, status=err.status, error=err.message)
    return portal.redirect("/admin/groups?done=deleted")


@page("/admin/providers", ["GET"])
async def providers(request: Request) -> Response:
    """``GET /admin/providers``: the providers of ``keyrelay.yaml`` and their models' prices (USD per Mtok)."""
    got = await admin_visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    return portal.render(
        request,
        "admin_providers.html",
        seed=session_id,
        signed_in=signed_in,
        active="admin",
        providers=portal.settings.providers,
    )
