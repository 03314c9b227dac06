"""Render the chat-template fixtures with Hugging Face's own renderer and
with ours, and count the renders that are identical.

``transformers`` is not a dependency of the project; install it somewhere of
its own and point PYTHONPATH at it, for instance:

    pip install --no-deps --target /tmp/hf \
        transformers regex tokenizers safetensors
    PYTHONPATH=/tmp/hf:. .venv/bin/python \
        scripts/compare_chat_templates_with_transformers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers.utils.chat_template_utils import (  # type: ignore[import-not-found]
    render_jinja_template,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from balancer.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402
from tests.test_chat_template_hf import (  # noqa: E402
    CONVERSATIONS,
    FIXTURES,
    TEMPLATES,
    _conversations,
)


def main() -> None:
    same = 0
    total = 0
    for name in TEMPLATES:
        source = (FIXTURES / f"{name}.jinja").read_text()
        for case in CONVERSATIONS:
            ours_case = _conversations(openai_style=True)[case]
            hf_case = _conversations(openai_style=False)[case]
            try:
                ours = ChatTemplate(source, "<s>", "</s>").render(
                    ours_case["messages"],
                    add_generation_prompt=True,
                    tools=ours_case.get("tools"),
                )
            except ChatTemplateError as error:
                ours = f"(failed: {error})"
            rendered, _ = render_jinja_template(
                conversations=[hf_case["messages"]],
                tools=hf_case.get("tools"),
                chat_template=source,
                add_generation_prompt=True,
                bos_token="<s>",
                eos_token="</s>",
            )
            total += 1
            if rendered[0] == ours:
                same += 1
            else:
                print(f"differs: {name} / {case}")
    print(f"{same} of {total} renders identical to transformers' render_jinja_template")


if __name__ == "__main__":
    main()
