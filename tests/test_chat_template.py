from __future__ import annotations

import pytest

from balancer.chat_template import (
    GEMMA_CHAT_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    compile_template,
    message_text,
)


def test_gemma_template_renders_turns_and_generation_prompt() -> None:
    template = ChatTemplate(GEMMA_CHAT_TEMPLATE, bos_token="<bos>")
    text = template.render(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
        add_generation_prompt=True,
    )
    assert text == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_template_folds_the_system_prompt_into_the_first_user_turn() -> None:
    text = ChatTemplate(GEMMA_CHAT_TEMPLATE).render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=False,
    )
    assert text == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{% for c in ''.__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ messages.append(1) }}",
    ],
)
def test_sandbox_refuses_python_internals(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render(
            [{"role": "user", "content": "x"}], add_generation_prompt=True
        )


def test_raise_exception_becomes_a_template_error() -> None:
    template = ChatTemplate("{{ raise_exception('only user turns') }}")
    with pytest.raises(ChatTemplateError, match="only user turns"):
        template.render([], add_generation_prompt=True)


def test_template_that_does_not_compile_is_reported() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        compile_template("{% for %}")


def test_tojson_filter_and_typed_content_parts() -> None:
    template = ChatTemplate("{{ messages[0]['content'] | tojson }}")
    assert (
        template.render([{"role": "user", "content": "é"}], add_generation_prompt=False)
        == '"é"'
    )
    assert message_text([{"type": "text", "text": "a"}, {"type": "image"}]) == "a"


def test_a_template_raising_overflow_error_is_a_chat_template_error() -> None:
    template = ChatTemplate("{% for i in range(100001) %}x{% endfor %}")
    with pytest.raises(ChatTemplateError, match="OverflowError: Range too big"):
        template.render([], add_generation_prompt=True)


def test_a_template_running_past_its_time_budget_is_stopped() -> None:
    template = ChatTemplate(
        "{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% endfor %}{% endfor %}"
    )
    with pytest.raises(ChatTemplateError, match=r"took longer than 0\.2 s"):
        template.render([], add_generation_prompt=True, time_limit_s=0.2)


def test_a_template_writing_past_its_output_budget_is_stopped() -> None:
    template = ChatTemplate("{{ 'x' * 100000000 }}")
    with pytest.raises(ChatTemplateError, match="exceed 1000 characters"):
        template.render([], add_generation_prompt=True, max_chars=1000)
