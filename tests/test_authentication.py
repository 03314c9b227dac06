"""One judge of a staff user, for the management API, the panel and the socket."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser, User

from balancer.authentication import is_staff_user


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("is_staff", "is_active", "staff"),
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_only_an_active_staff_account_is_a_staff_user(
    is_staff: bool, is_active: bool, staff: bool
) -> None:
    user = User.objects.create_user(
        "someone", password="a-long-password", is_staff=is_staff, is_active=is_active
    )
    assert is_staff_user(user) is staff


def test_an_anonymous_visitor_is_no_staff_user() -> None:
    assert is_staff_user(AnonymousUser()) is False
