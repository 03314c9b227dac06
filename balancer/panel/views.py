"""The panel's pages.  Every page is for staff only; others go to the login."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from balancer import request_log
from balancer.api.permissions import CHANGE_DESIRED_STATE
from balancer.authentication import is_staff_user, staff_required
from balancer.chat_template import ChatTemplateError
from balancer.desired_state import DesiredStateError
from balancer.login_limits import LimitedAuthenticationForm
from balancer.models import DesiredStateRevision
from balancer.panel.forms import (
    ApiKeyForm,
    DesiredStateForm,
    StaffAuthenticationForm,
    TemplatePreviewForm,
)
from balancer.panel.live import DashboardFeed
from balancer.panel.pools import chosen_pool
from balancer.panel.preview import render_preview
from balancer.panel.queries import agent_models
from balancer.panel.words import outcome_matches, request_row
from balancer.pools import DEFAULT_POOL
from balancer.services import (
    desired_state_current,
    desired_state_history,
    desired_state_revision_current,
    desired_state_roll_back,
    desired_state_update,
    pool_names,
    sync_redis,
)
from balancer.sse import snapshot_stream
from inference.api.views import ADD_KEY, REVOKE_KEY
from inference.models import InferenceApiKey
from inference.services import inference_api_key_create, inference_api_key_revoke

# Rows on the requests page, and revisions on the model page.
REQUESTS_SHOWN = 200
REVISIONS_SHOWN = 20
# Of a playground message, what is left to the conversation's text beside
# its images (see ``prompt``).
PROMPT_TEXT_ROOM = 256 * 1024
REQUEST_FILTERS = ("all", "done", "errors", "cancelled")


def require_permission(request: HttpRequest, permission: str) -> None:
    """403 for a staff user without ``permission``: a read-only operator, whose
    pages show what they may not change without a way to change it."""
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"read-only: this needs the permission {permission}")


class PanelLoginView(LoginView):
    template_name = "panel/login.html"
    authentication_form = StaffAuthenticationForm

    def dispatch(
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        # Staff who are logged in already go on; anyone else logs in (a user
        # who lost staff status would otherwise bounce between the two pages).
        if is_staff_user(request.user):
            return redirect(self.get_success_url())
        return super().dispatch(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        # A refusal that no password can change says so in its status too,
        # for clients that read no page.
        response = super().form_invalid(form)
        if not isinstance(form, LimitedAuthenticationForm):
            return response
        if form.refused_for:
            response.status_code = 429
            response["Retry-After"] = str(form.refused_for)
        elif form.unavailable:
            response.status_code = 503
        return response


@require_GET
@staff_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "panel/dashboard.html",
        {
            "max_buffered": settings.PADDLER_MAX_BUFFERED_REQUESTS,
            "pool": chosen_pool(request),
        },
    )


@require_GET
async def dashboard_stream(request: HttpRequest) -> HttpResponseBase:
    """Server-Sent Events for the dashboard (401 rather than a login redirect)."""
    if not is_staff_user(await request.auser()):
        return JsonResponse({"error": "log in as staff"}, status=401)
    pool = request.GET.get("pool", DEFAULT_POOL)
    if pool not in await sync_to_async(pool_names)():
        return JsonResponse({"error": f"no pool named {pool!r}"}, status=404)
    return snapshot_stream(request, DashboardFeed(pool).snapshot)


@staff_required
def model(request: HttpRequest) -> HttpResponse:
    """The chosen pool's desired state: edit it, see its revisions."""
    pool = chosen_pool(request)
    current = desired_state_revision_current(pool=pool)
    state = desired_state_current(pool=pool)
    can_change = request.user.has_perm(CHANGE_DESIRED_STATE)
    if request.method == "POST":
        require_permission(request, CHANGE_DESIRED_STATE)
        form = DesiredStateForm(request.POST)
        if form.is_valid() and form.state is not None:
            try:
                revision = desired_state_update(
                    state=form.state, user=request.user, note="panel", pool=pool
                )
            except DesiredStateError as error:
                form.add_state_error(error)
            else:
                if current is not None and revision.pk == current.pk:
                    messages.info(request, "Nothing changed; no new revision.")
                    return redirect("panel:model")
                messages.success(
                    request,
                    f"Saved as revision {revision.pk} of pool {pool}; "
                    "its agents apply it now.",
                )
                return redirect("panel:dashboard")
    else:
        form = DesiredStateForm(initial=DesiredStateForm.initial_from(state))
    if not can_change:
        for field in form.fields.values():
            field.disabled = True
    revisions = desired_state_history(limit=REVISIONS_SHOWN, pool=pool)
    return render(
        request,
        "panel/model.html",
        {
            "pool": pool,
            "form": form,
            "can_change": can_change,
            "agent_models": agent_models(),
            "revisions": [(revision, revision.to_state()) for revision in revisions],
        },
    )


@require_POST
@staff_required
def model_preview(request: HttpRequest) -> JsonResponse:
    """The template rendered against a sample conversation, or why it fails.

    Always 200: the outcome is in the body, so that a browser does not report
    a failed request while an operator is still typing.
    """
    form = TemplatePreviewForm(request.POST)
    form.is_valid()
    try:
        rendered = render_preview(
            form.cleaned_data.get("template", ""),
            system_prompt=form.cleaned_data.get("default_system_prompt", ""),
        )
    except ChatTemplateError as error:
        return JsonResponse({"ok": False, "error": str(error)})
    return JsonResponse({"ok": True, "rendered": rendered})


@require_POST
@staff_required
def roll_back(request: HttpRequest, revision_id: int) -> HttpResponse:
    require_permission(request, CHANGE_DESIRED_STATE)
    try:
        revision = desired_state_roll_back(revision_id=revision_id, user=request.user)
    except DesiredStateRevision.DoesNotExist:
        raise Http404(f"no revision {revision_id}") from None
    except DesiredStateError as error:
        messages.error(request, f"Revision {revision_id} cannot be applied: {error}")
        return redirect("panel:model")
    messages.success(
        request,
        f"Rolled back to revision {revision_id} (saved as revision {revision.pk}); "
        "the agents apply it now.",
    )
    return redirect("panel:dashboard")


@require_GET
@staff_required
def prompt(request: HttpRequest) -> HttpResponse:
    pool = chosen_pool(request)
    current = desired_state_current(pool=pool)
    # An attached image travels base64 (4 bytes for 3) in one socket
    # message, which PADDLER_MAX_REQUEST_BYTES bounds; the page refuses an
    # image that cannot fit (leaving room for the conversation's text)
    # instead of sending it to be refused.
    inline = (settings.PADDLER_MAX_REQUEST_BYTES - PROMPT_TEXT_ROOM) * 3 // 4
    return render(
        request,
        "panel/prompt.html",
        {
            "default_system_prompt": current.default_system_prompt,
            "pool": pool,
            "max_image_bytes": max(0, min(settings.PADDLER_MAX_IMAGE_BYTES, inline)),
        },
    )


@require_GET
@staff_required
def requests(request: HttpRequest) -> HttpResponse:
    """The chosen pool's newest requests."""
    pool = chosen_pool(request)
    wanted = request.GET.get("outcome", "all")
    if wanted not in REQUEST_FILTERS:
        wanted = "all"
    rows = [
        request_row(record)
        for record in request_log.read_newest(sync_redis(), limit=REQUESTS_SHOWN)
        if record["pool"] == pool and outcome_matches(record, wanted)
    ]
    template = (
        "panel/_request_rows.html" if "rows" in request.GET else "panel/requests.html"
    )
    return render(
        request,
        template,
        {"rows": rows, "wanted": wanted, "filters": REQUEST_FILTERS, "pool": pool},
    )


@staff_required
def api_keys(request: HttpRequest) -> HttpResponse:
    """Inference API keys: a new key is shown once, on the page that made it."""
    created: str | None = None
    if request.method == "POST":
        require_permission(request, ADD_KEY)
        form = ApiKeyForm(request.POST)
        if form.is_valid():
            key, created = inference_api_key_create(name=form.cleaned_data["name"])
            messages.success(request, f"Created the key “{key.name}”.")
            form = ApiKeyForm()
    else:
        form = ApiKeyForm()
    response = render(
        request,
        "panel/api_keys.html",
        {
            "form": form,
            "created": created,
            "keys": InferenceApiKey.objects.all(),
            "active": InferenceApiKey.objects.active().count(),
            "environment_keys": len(settings.PADDLER_INFERENCE_API_KEYS),
            "can_add": request.user.has_perm(ADD_KEY),
            "can_revoke": request.user.has_perm(REVOKE_KEY),
        },
    )
    # The page may hold a key in clear: no cache may keep it.
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@staff_required
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    require_permission(request, REVOKE_KEY)
    key = get_object_or_404(InferenceApiKey, pk=key_id)
    inference_api_key_revoke(prefix=key.prefix)
    messages.success(request, f"Revoked the key “{key.name}”; it no longer works.")
    return redirect("panel:api_keys")
