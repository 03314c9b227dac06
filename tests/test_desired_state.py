from __future__ import annotations

from typing import Any

import pytest

from balancer.desired_state import (
    DesiredState,
    DesiredStateError,
    InferenceParameters,
)


def test_defaults_are_paddlers() -> None:
    parameters = DesiredState.from_json({}).inference_parameters
    assert parameters == InferenceParameters()
    assert parameters.to_json() == {
        "n_batch": 2048,
        "context_size": 8192,
        "embedding_batch_size": 256,
        "enable_embeddings": False,
        "image_resize_to_fit": 1024,
        "k_cache_dtype": "Q8_0",
        "v_cache_dtype": "Q8_0",
        "min_p": 0.05,
        "n_gpu_layers": 0,
        "penalty_frequency": 0.0,
        "penalty_last_n": -1,
        "penalty_presence": 0.8,
        "penalty_repeat": 1.1,
        "pooling_type": "Last",
        "temperature": 0.8,
        "top_k": 80,
        "top_p": 0.8,
    }


@pytest.mark.parametrize(
    "model",
    [
        "None",
        {"LocalToAgent": "/models/m.gguf"},
        {
            "HuggingFace": {
                "repo_id": "org/repo",
                "filename": "m.gguf",
                "revision": "main",
            }
        },
        {"Url": {"url": "https://example.invalid/m.gguf"}},
    ],
)
def test_model_sources_round_trip(model: Any) -> None:
    state = DesiredState.from_json({"model": model})
    assert state.to_json()["model"] == model
    assert DesiredState.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inference_parameters": {"n_batch": -1}}, "inference_parameters.n_batch"),
        ({"inference_parameters": {"top_p": -0.1}}, "inference_parameters.top_p"),
        ({"inference_parameters": {"top_k": "many"}}, "inference_parameters.top_k"),
        (
            {"inference_parameters": {"enable_embeddings": 1}},
            "inference_parameters.enable_embeddings",
        ),
        (
            {"inference_parameters": {"v_cache_dtype": "F8"}},
            "inference_parameters.v_cache_dtype",
        ),
        ({"model": {"LocalToAgent": "m.gguf"}}, "model.LocalToAgent"),
        ({"model": {"Url": {"url": "ftp://x/m.gguf"}}}, "model.Url.url"),
        ({"model": {"Disk": "/m.gguf"}}, "model"),
        ({"use_chat_template_override": True}, "chat_template_override"),
        ({"chat_template_override": "{{ x }}"}, "chat_template_override"),
    ],
)
def test_invalid_values_name_their_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(DesiredStateError) as error:
        DesiredState.from_json(body)
    assert error.value.field == field
