from __future__ import annotations

from django.contrib import admin

from inference.models import DesiredStateRevision


@admin.register(DesiredStateRevision)
class DesiredStateRevisionAdmin(admin.ModelAdmin[DesiredStateRevision]):
    list_display = ("id", "created_at", "created_by", "model", "note")
    readonly_fields = ("created_at",)
