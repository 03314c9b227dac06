"""Inference API keys in Django's admin: listed and revoked, never made here."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from inference.models import InferenceApiKey


@admin.register(InferenceApiKey)
class InferenceApiKeyAdmin(admin.ModelAdmin[InferenceApiKey]):
    """Lists and revokes keys; ``manage.py create_api_key`` makes them, since
    the plaintext must be shown exactly once."""

    list_display = ("name", "prefix", "created_at", "revoked_at")
    readonly_fields = ("name", "prefix", "created_at", "revoked_at")
    exclude = ("salt", "digest")
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[InferenceApiKey]) -> None:
        queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
