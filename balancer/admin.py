"""Django's admin: its login counts attempts as the panel's does."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm

from balancer.login_limits import LimitedAuthenticationForm


class LimitedAdminAuthenticationForm(
    LimitedAuthenticationForm, AdminAuthenticationForm
):
    """Staff only (the admin's rule), so many tries at a time."""


# The admin's own login view renders the refusal as a form error (with 200).
admin.site.login_form = LimitedAdminAuthenticationForm
