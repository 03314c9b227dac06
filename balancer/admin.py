"""Django's admin: the desired-state history (read-only, with roll back), and a
login that counts attempts as the panel's does."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.db.models import QuerySet
from django.http import HttpRequest

from balancer.desired_state import DesiredStateError
from balancer.login_limits import LimitedAuthenticationForm
from balancer.models import (
    INFERENCE_PARAMETERS,
    MODEL_SOURCE_FIELDS,
    DesiredStateRevision,
)
from balancer.services import desired_state_roll_back


def _source_fields(source: str) -> tuple[str, ...]:
    return (f"{source}_kind", *(f"{source}_{name}" for name in MODEL_SOURCE_FIELDS))


@admin.register(DesiredStateRevision)
class DesiredStateRevisionAdmin(admin.ModelAdmin[DesiredStateRevision]):
    """A revision is history: it is never edited nor deleted here.

    Changes go through the management API (or ``manage.py
    set_desired_state``), which validates them and pushes them to the
    agents; rolling back is an action on the list, which adds a revision.
    """

    list_display = (
        "id",
        "created_at",
        "created_by",
        "model_summary",
        "use_chat_template_override",
        "context_size",
        "temperature",
        "note",
    )
    list_display_links = ("id", "created_at")
    list_filter = (
        "model_kind",
        "use_chat_template_override",
        "enable_embeddings",
        ("created_by", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = (
        "note",
        "created_by__username",
        "model_local_path",
        "model_repo_id",
        "model_filename",
        "model_url",
    )
    date_hierarchy = "created_at"
    list_select_related = ("created_by",)
    actions = ("roll_back",)
    fieldsets = (
        (None, {"fields": ("created_at", "created_by", "note")}),
        ("Model", {"fields": _source_fields("model")}),
        (
            "Multimodal projection",
            {"fields": _source_fields("multimodal_projection")},
        ),
        (
            "Chat template and system prompt",
            {
                "fields": (
                    "use_chat_template_override",
                    "chat_template_override",
                    "default_system_prompt",
                )
            },
        ),
        ("Inference parameters", {"fields": INFERENCE_PARAMETERS}),
    )

    @admin.display(description="model", ordering="model_kind")
    def model_summary(self, revision: DesiredStateRevision) -> str:
        source = revision.model_source("model")
        if source.kind == "LocalToAgent":
            return source.local_path
        if source.kind == "HuggingFace":
            return f"{source.repo_id}/{source.filename}@{source.revision}"
        if source.kind == "Url":
            return source.url
        return "none"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: DesiredStateRevision | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: DesiredStateRevision | None = None
    ) -> bool:
        return False

    def has_roll_back_permission(self, request: HttpRequest) -> bool:
        # Rolling back adds a revision.
        return request.user.has_perm("balancer.add_desiredstaterevision")

    @admin.action(
        description="Roll back to the selected revision", permissions=["roll_back"]
    )
    def roll_back(
        self, request: HttpRequest, queryset: QuerySet[DesiredStateRevision]
    ) -> None:
        selected = list(queryset[:2])
        if len(selected) != 1:
            self.message_user(
                request, "Select exactly one revision to roll back to.", messages.ERROR
            )
            return
        try:
            revision = desired_state_roll_back(
                revision_id=selected[0].pk, user=request.user
            )
        except DesiredStateError as error:
            self.message_user(request, f"Cannot roll back: {error}", messages.ERROR)
            return
        self.message_user(
            request,
            f"Rolled back to revision {selected[0].pk}: the desired state is now "
            f"revision {revision.pk}, sent to the agents.",
            messages.SUCCESS,
        )


class LimitedAdminAuthenticationForm(
    LimitedAuthenticationForm, AdminAuthenticationForm
):
    """Staff only (the admin's rule), so many tries at a time."""


# The admin's own login view renders the refusal as a form error (with 200).
admin.site.login_form = LimitedAdminAuthenticationForm
