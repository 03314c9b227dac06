"""The management API's endpoints (Paddler's, and ours beside them).

DRF views are synchronous: under daphne Django runs them on its worker
thread.  The snapshots of the registry and the buffer are async code (the SSE
streams share them): ``async_to_sync`` runs them on the web process's event
loop, where its Redis client lives.  Plain reads use the synchronous client.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, get_args

from asgiref.sync import async_to_sync
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from balancer import keys, request_log
from balancer.api.parsers import request_body
from balancer.api.permissions import (
    ADD_POOL,
    CHANGE_DESIRED_STATE,
    CHANGE_POOL,
    DELETE_POOL,
    may_change,
)
from balancer.api.serializers import (
    AgentDesiredStateSerializer,
    AgentsSnapshotSerializer,
    BufferedRequestsSerializer,
    ChatTemplateSerializer,
    DesiredStateQuerySerializer,
    DesiredStateSerializer,
    ErrorSerializer,
    ModelMetadataSerializer,
    PoolAliasesSerializer,
    PoolCreateSerializer,
    PoolQuerySerializer,
    PoolSerializer,
    RequestLogPageSerializer,
    RevisionListSerializer,
    RevisionQuerySerializer,
    RevisionSerializer,
)
from balancer.contract import RequestKind
from balancer.desired_state import DesiredState, DesiredStateError
from balancer.models import DesiredStateRevision, Pool
from balancer.pools import DEFAULT_POOL, PoolError
from balancer.services import (
    desired_state_current,
    desired_state_history,
    desired_state_roll_back,
    desired_state_update,
    pool_create,
    pool_delete,
    pool_list,
    pool_names,
    pool_set_aliases,
    sync_redis,
)
from balancer.snapshots import agents_snapshot, buffer_snapshot

TAGS = ["management"]
INVALID = OpenApiResponse(ErrorSerializer, description="Invalid, by field")
UNKNOWN = OpenApiResponse(ErrorSerializer, description="No such thing")
READ_ONLY = OpenApiResponse(
    ErrorSerializer, description="A staff user without the change permission"
)


class AgentsView(APIView):
    """The agents and what each reports (Paddler's snapshot)."""

    @extend_schema(tags=TAGS, responses=AgentsSnapshotSerializer)
    def get(self, request: Request) -> Response:
        return Response(async_to_sync(agents_snapshot)())


def pool_of(request: Request) -> str:
    """The pool a request names with ``?pool=`` (the default pool without
    it); 404 for one that does not exist."""
    query = PoolQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    pool: str = query.validated_data["pool"]
    if pool != DEFAULT_POOL and pool not in pool_names():
        raise NotFound(f"no pool named {pool!r}")
    return pool


class BufferedRequestsView(APIView):
    """How many requests wait for a free slot in a pool, across every web
    replica: what an autoscaler reads to grow that pool's hosts."""

    @extend_schema(
        tags=TAGS,
        parameters=[PoolQuerySerializer],
        responses={200: BufferedRequestsSerializer, 404: UNKNOWN},
    )
    def get(self, request: Request) -> Response:
        return Response(async_to_sync(buffer_snapshot)(pool_of(request)))


class DesiredStateView(APIView):
    """The desired state: read it, or replace it and push it to the agents.

    A GET answers Paddler's fields only, which a strict Paddler client
    refuses to see more of; ``?extensions=true`` adds ours.  A PUT takes
    either.
    """

    change_permission = CHANGE_DESIRED_STATE

    @extend_schema(
        tags=TAGS,
        parameters=[DesiredStateQuerySerializer],
        responses=DesiredStateSerializer,
    )
    def get(self, request: Request) -> Response:
        query = DesiredStateQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        state = desired_state_current(pool=pool_of(request))
        if query.validated_data["extensions"]:
            return Response(DesiredStateSerializer(state).data)
        return Response(state.to_paddler_json())

    @extend_schema(
        tags=TAGS,
        parameters=[PoolQuerySerializer],
        request=DesiredStateSerializer,
        responses={204: None, 400: INVALID, 403: READ_ONLY, 404: UNKNOWN},
    )
    def put(self, request: Request) -> Response:
        pool = pool_of(request)
        serializer = DesiredStateSerializer(
            data=request_body(request), context={"pool": pool}
        )
        serializer.is_valid(raise_exception=True)
        try:
            desired_state_update(
                state=serializer.validated_data,
                user=request.user,
                note="API",
                pool=pool,
            )
        except DesiredStateError as error:
            # What the database refuses though the rules let it through.
            raise serializers.ValidationError({error.field: [error.message]}) from None
        return Response(status=204)


class RevisionsView(APIView):
    """Ours: the history of the desired state, newest first (``?limit=``)."""

    @extend_schema(
        tags=TAGS,
        parameters=[RevisionQuerySerializer],
        responses={200: RevisionListSerializer, 400: INVALID},
    )
    def get(self, request: Request) -> Response:
        query = RevisionQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        revisions = desired_state_history(
            limit=query.validated_data["limit"], pool=pool_of(request)
        )
        return Response({"revisions": RevisionSerializer(revisions, many=True).data})


class RollBackView(APIView):
    """Ours: make an earlier revision's state current again, as a new one."""

    change_permission = CHANGE_DESIRED_STATE

    @extend_schema(
        tags=TAGS,
        request=None,
        responses={204: None, 400: INVALID, 403: READ_ONLY, 404: UNKNOWN},
    )
    def post(self, request: Request, revision_id: int) -> Response:
        try:
            desired_state_roll_back(revision_id=revision_id, user=request.user)
        except DesiredStateRevision.DoesNotExist:
            raise NotFound(f"no revision {revision_id}") from None
        except DesiredStateError as error:
            raise serializers.ValidationError({error.field: [error.message]}) from None
        return Response(status=204)


class ApplicableStateView(APIView):
    """What the agents are told to apply, or ``null`` before any state."""

    @extend_schema(
        tags=TAGS,
        parameters=[PoolQuerySerializer],
        responses={200: AgentDesiredStateSerializer, 404: UNKNOWN},
    )
    def get(self, request: Request) -> Response:
        # What was last published, which is what agents were told to apply
        # (null before anything was), in the shape agents take it in Paddler.
        raw = sync_redis().get(keys.desired_state(pool_of(request)))
        if raw is None:
            return Response(None)
        return Response(DesiredState.from_json(json.loads(raw)).to_agent_json())


def known_agent(agent_id: str) -> str:
    """The pool of a live agent; 404 for an agent that is not."""
    raw = sync_redis().get(keys.agent_status(agent_id))
    if raw is None:
        raise NotFound(f"no agent {agent_id}")
    return str(json.loads(raw).get("pool") or DEFAULT_POOL)


class AgentChatTemplateOverrideView(APIView):
    """The chat template an agent is told to use instead of the model's."""

    @extend_schema(
        tags=TAGS,
        responses={
            200: OpenApiResponse(
                ChatTemplateSerializer, description="The override, or null"
            ),
            404: UNKNOWN,
        },
    )
    def get(self, request: Request, agent_id: str) -> Response:
        state = desired_state_current(pool=known_agent(agent_id))
        if not state.use_chat_template_override or state.chat_template_override is None:
            return Response(None)
        return Response({"content": state.chat_template_override})


class AgentModelMetadataView(APIView):
    """The GGUF metadata of an agent's model, once it has loaded one."""

    @extend_schema(
        tags=TAGS,
        responses={
            200: OpenApiResponse(
                ModelMetadataSerializer, description="The metadata, or null"
            ),
            404: UNKNOWN,
        },
    )
    def get(self, request: Request, agent_id: str) -> Response:
        known_agent(agent_id)
        raw = sync_redis().get(keys.agent_metadata(agent_id))
        if raw is None:
            return Response(None)
        return Response({"metadata": json.loads(raw)["metadata"]})


REQUEST_LOG_DEFAULT_LIMIT = 50
REQUEST_LOG_MAX_LIMIT = 200


def encode_cursor(position: request_log.Position) -> str:
    raw = json.dumps([position.id, position.finished_at]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> request_log.Position:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        record_id, finished_at = value
        if not isinstance(record_id, str) or not isinstance(finished_at, int | float):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise serializers.ValidationError(
            {"cursor": ["is not a cursor this API gave out"]}
        ) from None
    return request_log.Position(record_id, float(finished_at))


class RequestLogQuerySerializer(serializers.Serializer[Any]):
    outcome = serializers.CharField(
        required=False,
        default="",
        help_text='"done", "cancelled", "errors" (anything else), or an exact '
        'outcome such as "504"',
    )
    agent = serializers.CharField(
        required=False, default="", help_text="An agent's id or name."
    )
    kind = serializers.ChoiceField(
        choices=get_args(RequestKind), required=False, default=""
    )
    pool = serializers.CharField(
        required=False, default="", help_text="A model pool's name."
    )
    limit = serializers.IntegerField(
        min_value=1, max_value=REQUEST_LOG_MAX_LIMIT, default=REQUEST_LOG_DEFAULT_LIMIT
    )
    cursor = serializers.CharField(required=False, default="")


class RequestLogView(APIView):
    """Ours: the finished requests, newest first, filtered, a page at a time.

    ``next`` is the URL of the following page (the same filters, and a
    cursor), or null on the last page.
    """

    @extend_schema(
        tags=TAGS,
        parameters=[RequestLogQuerySerializer],
        responses={200: RequestLogPageSerializer, 400: INVALID},
    )
    def get(self, request: Request) -> Response:
        query = RequestLogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        after = decode_cursor(params["cursor"]) if params["cursor"] else None
        records, position = request_log.read_page(
            sync_redis(),
            wanted=request_log.Filter(
                outcome=params["outcome"],
                agent=params["agent"],
                kind=params["kind"],
                pool=params["pool"],
            ),
            after=after,
            limit=params["limit"],
        )
        next_url = None
        if position is not None:
            following = request.query_params.copy()
            following["cursor"] = encode_cursor(position)
            next_url = request.build_absolute_uri(
                f"{request.path}?{following.urlencode()}"
            )
        return Response({"next": next_url, "results": records})


class PoolsView(APIView):
    """Ours: the model pools; create one (with its first desired state)."""

    change_permission = ADD_POOL

    @extend_schema(tags=TAGS, responses=PoolSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response({"pools": PoolSerializer(pool_list(), many=True).data})

    @extend_schema(
        tags=TAGS,
        request=PoolCreateSerializer,
        responses={201: PoolSerializer, 400: INVALID, 403: READ_ONLY},
    )
    def post(self, request: Request) -> Response:
        body = PoolCreateSerializer(data=request_body(request))
        body.is_valid(raise_exception=True)
        values = body.validated_data
        try:
            pool = pool_create(
                name=values["name"],
                aliases=values["aliases"],
                state=values.get("desired_state"),
                user=request.user,
            )
        except PoolError as error:
            raise serializers.ValidationError({"name": [str(error)]}) from None
        return Response(PoolSerializer(pool).data, status=201)


class PoolView(APIView):
    """Ours: one pool; change its aliases, or delete it (never the default
    pool, nor one an agent still serves)."""

    change_permission = CHANGE_POOL

    def _found(self, name: str) -> Pool:
        for pool in pool_list():
            if pool.name == name:
                return pool
        raise NotFound(f"no pool named {name!r}")

    @extend_schema(tags=TAGS, responses={200: PoolSerializer, 404: UNKNOWN})
    def get(self, request: Request, name: str) -> Response:
        return Response(PoolSerializer(self._found(name)).data)

    @extend_schema(
        tags=TAGS,
        request=PoolAliasesSerializer,
        responses={200: PoolSerializer, 400: INVALID, 403: READ_ONLY, 404: UNKNOWN},
    )
    def patch(self, request: Request, name: str) -> Response:
        self._found(name)
        body = PoolAliasesSerializer(data=request_body(request))
        body.is_valid(raise_exception=True)
        try:
            pool = pool_set_aliases(name=name, aliases=body.validated_data["aliases"])
        except PoolError as error:
            raise serializers.ValidationError({"aliases": [str(error)]}) from None
        return Response(PoolSerializer(pool).data)

    @extend_schema(
        tags=TAGS,
        responses={204: None, 400: INVALID, 403: READ_ONLY, 404: UNKNOWN},
    )
    def delete(self, request: Request, name: str) -> Response:
        # Deleting takes more than changing: IsOperator checked the change
        # permission, this the delete one.
        if not may_change(request, DELETE_POOL):
            raise PermissionDenied(
                f"read-only: deleting a pool needs the permission {DELETE_POOL!r}"
            )
        self._found(name)
        try:
            pool_delete(name=name)
        except PoolError as error:
            raise serializers.ValidationError({"name": [str(error)]}) from None
        return Response(status=204)
