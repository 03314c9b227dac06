from __future__ import annotations

from django.contrib.auth.views import LogoutView
from django.urls import path

from balancer.panel import views

app_name = "panel"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard/stream", views.dashboard_stream, name="dashboard_stream"),
    path("model/", views.model, name="model"),
    path("model/preview", views.model_preview, name="model_preview"),
    path(
        "model/revisions/<int:revision_id>/roll_back",
        views.roll_back,
        name="roll_back",
    ),
    path("prompt/", views.prompt, name="prompt"),
    path("requests/", views.requests, name="requests"),
    path("api-keys/", views.api_keys, name="api_keys"),
    path("api-keys/<int:key_id>/revoke", views.api_key_revoke, name="api_key_revoke"),
    path("login/", views.PanelLoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
]
