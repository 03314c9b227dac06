"""Inference API keys over the management API: the key is shown once."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from balancer.api.parsers import request_body
from balancer.api.serializers import ErrorSerializer
from inference.models import InferenceApiKey
from inference.services import inference_api_key_create, inference_api_key_revoke

# What making a key, and revoking one, need of a staff user.
ADD_KEY = "inference.add_inferenceapikey"
REVOKE_KEY = "inference.change_inferenceapikey"


class InferenceApiKeySerializer(serializers.ModelSerializer[InferenceApiKey]):
    # The clear start of the key, enough to tell keys apart; never the secret.
    shown_as = serializers.SerializerMethodField()
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = InferenceApiKey
        fields = ["id", "name", "prefix", "shown_as", "created_at", "revoked_at"]
        fields += ["is_active"]
        read_only_fields = ["prefix", "created_at", "revoked_at"]

    def get_shown_as(self, key: InferenceApiKey) -> str:
        return f"pdl_{key.prefix}_…"


class NewInferenceApiKeySerializer(InferenceApiKeySerializer):
    """A key just made: the one answer that carries the key itself."""

    key = serializers.CharField(read_only=True, help_text="Shown once only.")

    class Meta(InferenceApiKeySerializer.Meta):
        fields = [*InferenceApiKeySerializer.Meta.fields, "key"]


TAGS = ["management"]
ERROR = OpenApiResponse(ErrorSerializer)


class InferenceApiKeysView(APIView):
    """The inference API keys, newest first; a POST makes one."""

    change_permission = ADD_KEY

    @extend_schema(
        tags=TAGS,
        responses=inline_serializer(
            "InferenceApiKeyList",
            {"inference_api_keys": InferenceApiKeySerializer(many=True)},
        ),
    )
    def get(self, request: Request) -> Response:
        keys = InferenceApiKey.objects.all()
        return Response(
            {"inference_api_keys": InferenceApiKeySerializer(keys, many=True).data}
        )

    @extend_schema(
        tags=TAGS,
        request=InferenceApiKeySerializer,
        responses={201: NewInferenceApiKeySerializer, 400: ERROR, 403: ERROR},
    )
    def post(self, request: Request) -> Response:
        serializer = InferenceApiKeySerializer(data=request_body(request))
        serializer.is_valid(raise_exception=True)
        key, plaintext = inference_api_key_create(
            name=serializer.validated_data["name"]
        )
        body: dict[str, Any] = dict(InferenceApiKeySerializer(key).data)
        body["key"] = plaintext
        response = Response(body, status=201)
        # The body holds a key in clear: no cache may keep it.
        response["Cache-Control"] = "no-store"
        return response


class InferenceApiKeyRevokeView(APIView):
    """Revoke a key: it stops working on the next request; the row stays."""

    change_permission = REVOKE_KEY

    @extend_schema(
        tags=TAGS,
        request=None,
        responses={200: InferenceApiKeySerializer, 403: ERROR, 404: ERROR},
    )
    def post(self, request: Request, key_id: int) -> Response:
        key = get_object_or_404(InferenceApiKey, pk=key_id)
        revoked = inference_api_key_revoke(prefix=key.prefix)
        return Response(InferenceApiKeySerializer(revoked).data)
