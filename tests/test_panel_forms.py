"""The model page's form and template preview, checked like the API checks."""

from __future__ import annotations

from typing import Any

import pytest

from balancer.chat_template import GEMMA_CHAT_TEMPLATE, ChatTemplateError
from balancer.desired_state import DesiredState, DesiredStateError
from balancer.panel.forms import DesiredStateForm, StaffAuthenticationForm
from balancer.panel.preview import render_preview


def form_data(**changes: Any) -> dict[str, Any]:
    current = DesiredState.from_json(
        {
            "model": {"LocalToAgent": "/models/a.gguf"},
            "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE},
            "use_chat_template_override": True,
        }
    )
    data = DesiredStateForm.initial_from(current)
    data["enable_embeddings"] = "on" if data["enable_embeddings"] else ""
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def bound(**changes: Any) -> DesiredStateForm:
    return DesiredStateForm(form_data(**changes))


def test_an_unchanged_form_gives_back_the_state() -> None:
    form = bound()
    assert form.is_valid(), form.errors
    assert form.state is not None
    assert form.state.model.local_path == "/models/a.gguf"
    assert form.state.use_chat_template_override
    assert form.state.inference_parameters.temperature == 0.8


def test_a_changed_parameter_is_in_the_state() -> None:
    form = bound(temperature="0.25", top_k="12", k_cache_dtype="F16")
    assert form.is_valid(), form.errors
    assert form.state is not None
    parameters = form.state.inference_parameters
    assert (parameters.temperature, parameters.top_k) == (0.25, 12)
    assert parameters.k_cache_dtype == "F16"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"top_p": "1.5"}, "top_p", "Must be between 0 and 1."),
        ({"temperature": "-1"}, "temperature", "Must be between 0 and 100."),
        ({"n_gpu_layers": "-2"}, "n_gpu_layers", "-1: all layers"),
        ({"context_size": "many"}, "context_size", "Enter a whole number."),
        ({"model_local_path": "models/a.gguf"}, "model_local_path", "absolute path"),
        (
            {"model_source": "HuggingFace", "model_hf_repo_id": "nope"},
            "model_hf_repo_id",
            "owner/name",
        ),
        (
            {
                "mmproj_source": "HuggingFace",
                "mmproj_hf_repo_id": "a/b",
                "mmproj_hf_filename": "../x",
            },
            "mmproj_hf_filename",
            "file name",
        ),
        ({"model_source": "Url", "model_url": "ftp://x"}, "model_url", "http(s)"),
        (
            {"chat_template_override": "{% for %}"},
            "chat_template_override",
            "does not compile",
        ),
        ({"chat_template_override": "  "}, "chat_template_override", "Write a"),
    ],
)
def test_errors_show_next_to_the_field_they_concern(
    changes: dict[str, Any], field: str, message: str
) -> None:
    form = bound(**changes)
    assert not form.is_valid()
    assert form.state is None
    assert list(form.errors) == [field]
    assert message in " ".join(map(str, form.errors[field]))


def test_an_error_from_the_service_lands_on_its_field() -> None:
    form = bound()
    assert form.is_valid()
    form.add_state_error(DesiredStateError("inference_parameters.top_k", "too big"))
    assert form.errors["top_k"] == ["Too big."]
    form.add_state_error(DesiredStateError("somewhere", "wrong"))
    assert form.non_field_errors() == ["somewhere: wrong"]


def test_every_model_source_round_trips() -> None:
    form = bound(
        model_source="HuggingFace",
        model_hf_repo_id="owner/repo",
        model_hf_filename="m.gguf",
        model_hf_revision="",
        mmproj_source="Url",
        mmproj_url="https://example.com/mmproj.gguf",
    )
    assert form.is_valid(), form.errors
    assert form.state is not None
    assert form.state.model.to_json() == {
        "HuggingFace": {
            "repo_id": "owner/repo",
            "filename": "m.gguf",
            "revision": "main",
        }
    }
    assert form.state.multimodal_projection.to_json() == {
        "Url": {"url": "https://example.com/mmproj.gguf"}
    }
    again = DesiredStateForm.initial_from(form.state)
    assert again["model_hf_repo_id"] == "owner/repo"
    assert again["mmproj_source"] == "Url"


def test_the_model_s_own_template_keeps_an_unused_override() -> None:
    form = bound(template_choice="model")
    assert form.is_valid(), form.errors
    assert form.state is not None
    assert not form.state.use_chat_template_override
    assert form.state.chat_template_override == GEMMA_CHAT_TEMPLATE


def test_every_parameter_has_help() -> None:
    form = bound()
    for field in form.parameter_fields():
        assert field.help_text
        assert field.label


def test_preview_renders_a_sample_conversation_with_the_system_prompt() -> None:
    rendered = render_preview(GEMMA_CHAT_TEMPLATE, system_prompt="Be brief.")
    assert rendered.startswith("<bos><start_of_turn>user\nBe brief.\n\nHello!")
    assert rendered.endswith("<start_of_turn>model\n")


def test_preview_reports_compile_errors() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_preview("{% if %}")
    with pytest.raises(ChatTemplateError, match="template raised: no"):
        render_preview("{{ raise_exception('no') }}")


@pytest.mark.django_db
def test_only_staff_may_log_in_to_the_panel() -> None:
    from django.contrib.auth.models import User

    User.objects.create_user("viewer", password="a-long-password")
    User.objects.create_user("operator", password="a-long-password", is_staff=True)
    refused = StaffAuthenticationForm(
        data={"username": "viewer", "password": "a-long-password"}
    )
    assert not refused.is_valid()
    assert "not a staff account" in " ".join(map(str, refused.non_field_errors()))
    allowed = StaffAuthenticationForm(
        data={"username": "operator", "password": "a-long-password"}
    )
    assert allowed.is_valid(), allowed.errors
