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
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from balancer import keys, request_log
from balancer.api.parsers import request_body
from balancer.api.permissions import CHANGE_DESIRED_STATE
from balancer.api.serializers import (
    AgentDesiredStateSerializer,
    AgentsSnapshotSerializer,
    BufferedRequestsSerializer,
    ChatTemplateSerializer,
    DesiredStateQuerySerializer,
    DesiredStateSerializer,
    ErrorSerializer,
    ModelMetadataSerializer,
    RequestLogPageSerializer,
    RevisionListSerializer,
    RevisionQuerySerializer,
    RevisionSerializer,
)
from balancer.contract import RequestKind
from balancer.desired_state import DesiredState, DesiredStateError
from balancer.models import DesiredStateRevision
from balancer.services import (
    desired_state_current,
    desired_state_history,
    desired_state_roll_back,
    desired_state_update,
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


class BufferedRequestsView(APIView):
    """How many requests wait for a free slot, across every web replica."""

    @extend_schema(tags=TAGS, responses=BufferedRequestsSerializer)
    def get(self, request: Request) -> Response:
        return Response(async_to_sync(buffer_snapshot)())


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
        state = desired_state_current()
        if query.validated_data["extensions"]:
            return Response(DesiredStateSerializer(state).data)
        return Response(state.to_paddler_json())

    @extend_schema(
        tags=TAGS,
        request=DesiredStateSerializer,
        responses={204: None, 400: INVALID, 403: READ_ONLY},
    )
    def put(self, request: Request) -> Response:
        serializer = DesiredStateSerializer(data=request_body(request))
        serializer.is_valid(raise_exception=True)
        try:
            desired_state_update(
                state=serializer.validated_data, user=request.user, note="API"
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
        revisions = desired_state_history(limit=query.validated_data["limit"])
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

    @extend_schema(tags=TAGS, responses=AgentDesiredStateSerializer)
    def get(self, request: Request) -> Response:
        # What was last published, which is what agents were told to apply
        # (null before anything was), in the shape agents take it in Paddler.
        raw = sync_redis().get(keys.desired_state())
        if raw is None:
            return Response(None)
        return Response(DesiredState.from_json(json.loads(raw)).to_agent_json())


def known_agent(agent_id: str) -> None:
    if not sync_redis().exists(keys.agent_status(agent_id)):
        raise NotFound(f"no agent {agent_id}")


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
        known_agent(agent_id)
        state = desired_state_current()
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
                outcome=params["outcome"], agent=params["agent"], kind=params["kind"]
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
