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


# Above each bound by the smallest step, and at 2^31 (what llama.cpp's int32
# fields wrap at).
TOO_LARGE = [
    ("n_batch", 65_537, "must be between 1 and 65536"),
    ("n_batch", 2**31, "must be between 1 and 65536"),
    ("context_size", 1_048_577, "must be between 1 and 1048576"),
    ("context_size", 2**31, "must be between 1 and 1048576"),
    ("embedding_batch_size", 65_537, "must be between 1 and 65536"),
    ("image_resize_to_fit", 16_385, "must be between 1 and 16384"),
    ("n_gpu_layers", 4_097, "must be between -1 and 4096"),
    ("top_k", 1_000_001, "must be between 0 and 1000000 (0: off)"),
    ("top_k", 2**31, "must be between 0 and 1000000 (0: off)"),
    ("penalty_last_n", 2**31, "must be between -1 and 1048576"),
    ("temperature", 100.5, "must be between 0 and 100"),
    ("penalty_repeat", 101, "must be above 0 and at most 100 (1: off)"),
    ("penalty_presence", 100.5, "must be between -100 and 100 (0: off)"),
    ("penalty_frequency", -101, "must be between -100 and 100 (0: off)"),
]


@pytest.mark.parametrize(("name", "value", "message"), TOO_LARGE)
def test_numbers_beyond_their_bound_are_refused_with_the_range(
    name: str, value: float, message: str
) -> None:
    with pytest.raises(DesiredStateError) as error:
        InferenceParameters.from_json({name: value})
    assert error.value.field == f"inference_parameters.{name}"
    assert error.value.message.startswith(message)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_batch", 65_536),
        ("context_size", 1_048_576),
        ("embedding_batch_size", 65_536),
        ("image_resize_to_fit", 16_384),
        ("n_gpu_layers", 4_096),
        ("n_gpu_layers", -1),
        ("top_k", 1_000_000),
        ("penalty_last_n", -1),
        ("penalty_last_n", 1_048_576),
        ("temperature", 100),
        ("penalty_repeat", 100),
        ("penalty_presence", -100),
        ("penalty_frequency", 100),
    ],
)
def test_numbers_at_their_bound_are_accepted(name: str, value: float) -> None:
    parameters = InferenceParameters.from_json({name: value})
    assert getattr(parameters, name) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (name, value)
        for name in (
            "temperature",
            "penalty_repeat",
            "penalty_presence",
            "penalty_frequency",
        )
        for value in (float("nan"), float("inf"))
    ]
    + [("penalty_presence", float("-inf")), ("penalty_frequency", float("-inf"))],
)
def test_numbers_that_are_not_finite_are_refused(name: str, value: float) -> None:
    # The Python API takes what json.loads makes of NaN and 1e999.
    with pytest.raises(DesiredStateError) as error:
        InferenceParameters.from_json({name: value})
    assert error.value.field == f"inference_parameters.{name}"


def test_the_panel_form_shows_the_range_next_to_the_field() -> None:
    from balancer.panel.forms import DesiredStateForm

    data = DesiredStateForm.initial_from(DesiredState())
    data["enable_embeddings"] = ""
    data["context_size"] = str(2**31)
    form = DesiredStateForm(data)
    assert not form.is_valid()
    assert form.errors["context_size"] == ["Must be between 1 and 1048576."]
    assert form.state is None
