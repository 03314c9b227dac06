from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from balancer import views as management
from balancer.api import views as api
from inference import views as inference
from inference.api import views as api_keys
from inference.openai import views as openai

urlpatterns = [
    path("health", inference.health),
    path(
        "api/v1/continue_from_raw_prompt",
        inference.continue_from_raw_prompt,
    ),
    path(
        "api/v1/continue_from_conversation_history",
        inference.continue_from_conversation_history,
    ),
    path(
        "api/v1/generate_embedding_batch",
        inference.generate_embedding_batch,
    ),
    path("v1/chat/completions", openai.chat_completions),
    path("v1/responses", openai.responses),
    path("v1/completions", openai.completions),
    path("v1/embeddings", openai.embeddings),
    path("v1/models", openai.models),
    path("v1/models/<path:model>", openai.retrieve_model),
    path("api/v1/agents", api.AgentsView.as_view()),
    path("api/v1/agents/stream", management.agents_stream),
    path("api/v1/buffered_requests", api.BufferedRequestsView.as_view()),
    path("api/v1/buffered_requests/stream", management.buffered_requests_stream),
    path("api/v1/balancer_desired_state", api.DesiredStateView.as_view()),
    # Ours, not Paddler's: the history of the desired state, and roll back.
    path(
        "api/v1/balancer_desired_state/revisions",
        api.RevisionsView.as_view(),
    ),
    path(
        "api/v1/balancer_desired_state/revisions/<int:revision_id>/roll_back",
        api.RollBackView.as_view(),
    ),
    path("api/v1/balancer_applicable_state", api.ApplicableStateView.as_view()),
    path(
        "api/v1/agent/<str:agent_id>/chat_template_override",
        api.AgentChatTemplateOverrideView.as_view(),
    ),
    path(
        "api/v1/agent/<str:agent_id>/model_metadata",
        api.AgentModelMetadataView.as_view(),
    ),
    # Ours: the request log, inference API keys.
    path("api/v1/request_log", api.RequestLogView.as_view()),
    path("api/v1/pools", api.PoolsView.as_view()),
    path("api/v1/pools/<str:name>", api.PoolView.as_view()),
    path("api/v1/inference_api_keys", api_keys.InferenceApiKeysView.as_view()),
    path(
        "api/v1/inference_api_keys/<int:key_id>/revoke",
        api_keys.InferenceApiKeyRevokeView.as_view(),
    ),
    path("metrics", management.metrics),
    # The OpenAPI schema of all of the above, and a page to read and try it.
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
    # The web admin panel, at the root: /, /model/, /prompt/, /requests/, ...
    path("", include("balancer.panel.urls")),
]
