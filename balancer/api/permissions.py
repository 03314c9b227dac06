"""Who may do what on the management API.

Every operator (token or staff session) reads everything.  A change needs the
token, or a staff user holding the Django model permission the view names
(``change_permission``): a staff user without it is a read-only operator.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from balancer.api.authentication import ManagementToken

# What a change of the desired state (a PUT, a roll back) needs of a staff user.
CHANGE_DESIRED_STATE = "balancer.change_desiredstaterevision"
# What creating, re-aliasing and deleting a model pool need.
ADD_POOL = "balancer.add_pool"
CHANGE_POOL = "balancer.change_pool"
DELETE_POOL = "balancer.delete_pool"


def is_token_caller(request: Request) -> bool:
    return isinstance(request.auth, ManagementToken)


def may_change(request: Request, permission: str) -> bool:
    """Whether the caller may make the changes ``permission`` guards."""
    return is_token_caller(request) or bool(request.user.has_perm(permission))


class IsOperator(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if request.successful_authenticator is None:
            return False
        if request.method in SAFE_METHODS:
            return True
        permission = getattr(view, "change_permission", None)
        if permission is None:
            return False
        if not may_change(request, permission):
            # Said in the body: the operator is known, only this is not theirs.
            raise PermissionDenied(
                f"read-only: changing this needs the permission {permission!r}"
            )
        return True
