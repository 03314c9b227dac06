from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from balancer import views as management
from inference import views as inference
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
    path("api/v1/agents", management.agents),
    path("api/v1/agents/stream", management.agents_stream),
    path("api/v1/buffered_requests", management.buffered_requests),
    path("api/v1/buffered_requests/stream", management.buffered_requests_stream),
    path("api/v1/balancer_desired_state", management.balancer_desired_state),
    # Ours, not Paddler's: the history of the desired state, and roll back.
    path(
        "api/v1/balancer_desired_state/revisions",
        management.balancer_desired_state_revisions,
    ),
    path(
        "api/v1/balancer_desired_state/revisions/<int:revision_id>/roll_back",
        management.balancer_desired_state_roll_back,
    ),
    path("api/v1/balancer_applicable_state", management.balancer_applicable_state),
    path(
        "api/v1/agent/<str:agent_id>/chat_template_override",
        management.agent_chat_template_override,
    ),
    path(
        "api/v1/agent/<str:agent_id>/model_metadata",
        management.agent_model_metadata,
    ),
    path("metrics", management.metrics),
    path("admin/", admin.site.urls),
    # The web admin panel, at the root: /, /model/, /prompt/, /requests/, ...
    path("", include("balancer.panel.urls")),
]
