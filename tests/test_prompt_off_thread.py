"""A prompt being made never holds the other slots' decoding (issue 21).

Rendering a chat template and tokenizing a long prompt can take seconds in
llama.cpp's tokenizer; the engine makes prompts on the preparer's thread so
its decode loop goes on meanwhile.  Here a request arrives while another
streams, and its prompt is held on a gate: the stream goes on to its end.
Were prompts made on the decode thread, the stream would stop at the gate
and never finish.  The demo model runs in this process (no Redis).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.engine import Engine
from agents.jobs import Generation
from agents.positions import PositionKey
from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from balancer.desired_state import InferenceParameters
from tests.support.constants import ENDLESS_PROMPT
from tests.test_agent_hardening import WAIT_S, Outputs

HELD = "held"


class GatedEngine(Engine):
    """The real engine; the prompt of request ``held`` waits on a gate."""

    gate = threading.Event()
    entered = threading.Event()
    threads: dict[str, str] = {}

    def prompt_keys(self, job: Generation) -> list[PositionKey]:
        self.threads[job.request_id] = threading.current_thread().name
        if job.request_id == HELD:
            self.entered.set()
            assert self.gate.wait(WAIT_S * 2)
        return super().prompt_keys(job)


@pytest.fixture
def engine(model_path: Path) -> Iterator[tuple[GatedEngine, Outputs]]:
    outputs = Outputs()
    built = GatedEngine(
        model_path=str(model_path),
        slots=2,
        parameters=InferenceParameters(
            context_size=512, n_batch=256, temperature=0.0, penalty_repeat=1.0
        ),
        chat_template_override=GEMMA_CHAT_TEMPLATE,
        on_output=outputs,
        n_threads=1,
    )
    thread = threading.Thread(target=built.run, name="paddler-engine", daemon=True)
    thread.start()
    assert built.ready.wait(WAIT_S)
    yield built, outputs
    built.gate.set()
    built.stop()
    thread.join(WAIT_S)
    built.close()


def test_a_prompt_being_made_does_not_hold_other_requests(
    engine: tuple[GatedEngine, Outputs],
) -> None:
    built, outputs = engine
    built.gate.clear()
    built.submit(
        Generation(request_id="other", max_tokens=48, raw_prompt=ENDLESS_PROMPT)
    )
    first = outputs.items.get(timeout=WAIT_S)  # the other request streams
    assert first.request_id == "other" and not first.final
    built.submit(
        Generation(
            request_id=HELD,
            max_tokens=4,
            conversation=[{"role": "user", "content": "Tell me about Paris."}],
        )
    )
    # The held prompt is being made (and waits at the gate) ...
    assert built.entered.wait(WAIT_S)

    # ... while the other request streams on to its end.
    text, done = outputs.final("other")
    assert text and done.error is None
    assert built.slots_processing == 1  # the held request, still preparing

    built.gate.set()
    held_text, held_done = outputs.final(HELD)
    assert held_text and held_done.error is None
    # Both prompts were made off the decode loop's thread.
    assert set(built.threads.values()) == {"paddler-preparer"}
