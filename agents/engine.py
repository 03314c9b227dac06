"""The llama.cpp engine of an agent: one model, one context, batched slots.

Every slot is a llama.cpp sequence with its own KV cache and sampler chain.  One
``llama_decode`` per step carries the next token of every generating slot plus
prompt chunks of newly started ones (continuous batching), so a new request
joins at the next step instead of waiting for the others to finish.

The engine runs in a thread of its own (``run``); other threads talk to it
through ``submit`` and ``cancel``, and it hands its output, once per step, to
the ``on_output`` callback it was built with.  It knows nothing of Redis or
Django.

A request's prompt is made on the preparer's thread (``agents.prompting``),
never on the decode thread.  No exception from one request ends either
thread: it fails that request with an error item and the loop goes on.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import llama_cpp

from agents.embedder import Embedder
from agents.host_cache import (
    MIN_LOST_TOKENS,
    Entry,
    HostCache,
    buffer_size,
    cache_namespace,
)
from agents.jobs import (
    EmbeddingJob,
    Generation,
    ModelLoadError,
    Output,
    error_output,
)
from agents.multimodal import MultimodalError, Projection
from agents.output_split import OutputSplitter, splitter_for
from agents.positions import (
    PositionKey,
    image_safe,
    leading_text,
    text_only,
    text_run,
    text_tokens,
)
from agents.prompting import PromptPreparer, prompt_keys
from agents.sampling import sampler_chain
from agents.slots import (
    Slot,
    choose_slot,
    common_prefix_length,
    least_recently_used,
    split_on_stop,
)
from balancer.chat_template import ChatTemplate
from balancer.contract import (
    SlotReport,
    Usage,
    done_item,
    generation_failed_item,
    progress_item,
)
from balancer.desired_state import InferenceParameters
from balancer.grammar_limits import GrammarTooComplex
from balancer.model_offer import template_variants
from balancer.routing import request_prefix, served_prefix

logger = logging.getLogger(__name__)

_CACHE_TYPES = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 6,
    "Q5_1": 7,
    "Q8_0": 8,
    "IQ4_NL": 20,
    "BF16": 30,
}

_backend_ready = False
_backend_lock = threading.Lock()


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_log_set(_silent_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _silent_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp logs every tensor it loads; keep warnings and errors only.
    # ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continues a line
    # (seen on a model load; llama-cpp-python's own table is an older one).
    if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
        logger.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


class Engine:
    """A loaded model with ``slots`` batched sequences."""

    def __init__(
        self,
        *,
        model_path: str,
        slots: int,
        parameters: InferenceParameters,
        chat_template_override: str | None,
        on_output: Callable[[list[Output]], None],
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        host_cache: HostCache | None = None,
        projection_path: str | None = None,
    ) -> None:
        _init_backend()
        self.model_path = model_path
        self.parameters = parameters
        self.n_slots = slots
        self._on_output = on_output
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._waiting: list[Generation] = []
        self._stopped = threading.Event()
        # Set once the engine thread has warmed the model up.
        self.ready = threading.Event()
        threads = n_threads or os.cpu_count() or 1

        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = (
            parameters.n_gpu_layers if n_gpu_layers is None else n_gpu_layers
        )
        self._model = llama_cpp.llama_model_load_from_file(
            model_path.encode(), model_params
        )
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {model_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.metadata = self._read_metadata()
        self.context_per_slot = parameters.context_size

        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = parameters.context_size * slots
        context_params.n_batch = parameters.n_batch
        context_params.n_ubatch = min(parameters.n_batch, 512)
        context_params.n_seq_max = slots
        context_params.n_threads = threads
        context_params.n_threads_batch = threads
        context_params.type_k = _CACHE_TYPES[parameters.k_cache_dtype]
        context_params.type_v = _CACHE_TYPES[parameters.v_cache_dtype]
        # A full-size sliding-window cache keeps every position of a sequence,
        # so a slot can reuse any prefix of what it holds (Gemma 3 uses SWA).
        context_params.swa_full = True
        context_params.no_perf = True
        self._context = llama_cpp.llama_init_from_model(self._model, context_params)
        if not self._context:
            llama_cpp.llama_model_free(self._model)
            raise ModelLoadError(
                f"llama.cpp could not create a context of {context_params.n_ctx} "
                f"tokens for {slots} slots"
            )
        self._memory = llama_cpp.llama_get_memory(self._context)
        # The multimodal projection (issue 16), loaded against the model: it
        # reads images into the model's embedding space.  Its threads are the
        # engine's (the encoder runs on the engine thread, between steps).
        self.projection: Projection | None = None
        if projection_path is not None:
            try:
                self.projection = Projection(
                    projection_path,
                    model=self._model,
                    n_threads=threads,
                    use_gpu=model_params.n_gpu_layers != 0,
                )
            except ModelLoadError:
                llama_cpp.llama_free(self._context)
                llama_cpp.llama_model_free(self._model)
                raise
        self._n_batch = parameters.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._slots = [Slot(seq_id=index) for index in range(slots)]
        # Sequence states that outlive their slot (see agents.host_cache);
        # written and read on the engine thread only.
        self.host_cache = host_cache if host_cache is not None else HostCache(0)
        # Saved states hold only this many last positions of the model's
        # sliding-window layers (0: none); see agents.host_cache.
        self._window = max(0, llama_cpp.llama_model_n_swa(self._model))
        self.cache_namespace = cache_namespace(
            model_path,
            context_size=parameters.context_size,
            k_cache_dtype=parameters.k_cache_dtype,
            v_cache_dtype=parameters.v_cache_dtype,
        )
        self._piece = ctypes.create_string_buffer(256)
        # Each slot's generation split into content, reasoning and tool calls.
        self._splitters: dict[int, OutputSplitter] = {}
        # No token covers more prompt text than the longest piece of the
        # vocabulary, so a prompt longer than this cannot fit in a slot.
        self.prompt_char_limit = self.context_per_slot * self._longest_piece()
        # Jobs being rendered and tokenized, by request id (read by status
        # reports on other threads; changed on the engine thread only).
        self._preparing: dict[str, Generation] = {}
        self._preparer = PromptPreparer(
            prepare=self.prompt_keys, on_prepared=self._on_prepared
        )
        # When the engine loop last went round (monotonic seconds), for the
        # worker's watchdog; ``failure`` says why the loop ended, if it did.
        self.beat = time.monotonic()
        self.failure: str | None = None

        self._embedder = (
            Embedder(
                model=self._model,
                vocab=self._vocab,
                parameters=parameters,
                threads=threads,
                on_output=on_output,
                tokenize=self.tokenize,
            )
            if parameters.enable_embeddings
            else None
        )

        self.chat_template: ChatTemplate | None = None
        self.use_chat_template(chat_template_override)

    @property
    def serves_images(self) -> bool:
        """Whether requests with images can be served (a vision projection)."""
        return self.projection is not None and self.projection.supports_vision

    def use_chat_template(self, override: str | None) -> None:
        """Render conversations with ``override``, or the model's own template.

        Safe while the engine runs: a request renders its prompt once, when it
        is admitted, with whichever template is current then.
        """
        source = override if override else self.metadata.get("tokenizer.chat_template")
        self.bos_token = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_token = self._token_text(llama_cpp.llama_vocab_eos(self._vocab))
        self.chat_template = (
            None
            if source is None
            else ChatTemplate(source, self.bos_token, self.eos_token)
        )
        # The model's named templates (tool_use, rag) serve the requests
        # they are for, unless an override replaces them all.
        self.chat_template_variants = {
            name: ChatTemplate(text, self.bos_token, self.eos_token)
            for name, text in template_variants(self.metadata).items()
            if name != "default" and not override
        }

    def warm_up(self) -> None:
        """Run one small decode, so the first request does not pay for the
        backend's first-use work (buffer allocation, weight repacking).

        Called by ``run``, on the engine's own thread: llama.cpp's CPU backend
        keeps an OpenMP thread team per calling thread, and a second team
        (from a decode on another thread) slowed generation by a third here.
        """
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        batch = self._batch
        for index in range(min(8, self._n_batch)):
            batch.token[index] = bos
            batch.pos[index] = index
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = 0
            batch.logits[index] = index == 7
        batch.n_tokens = min(8, self._n_batch)
        llama_cpp.llama_decode(self._context, batch)
        llama_cpp.llama_memory_seq_rm(self._memory, 0, 0, -1)

    def submit(self, job: Generation) -> None:
        self._commands.put(("submit", job))

    def submit_embeddings(self, job: EmbeddingJob) -> None:
        if self._embedder is None:
            self._on_output(
                [
                    error_output(
                        job,
                        400,
                        "embeddings are not enabled: set "
                        "inference_parameters.enable_embeddings",
                    )
                ]
            )
            return
        self._embedder.submit(job)

    def cancel(self, request_id: str) -> None:
        self._commands.put(("cancel", request_id))
        if self._embedder is not None:
            self._embedder.cancel(request_id)

    def stop(self) -> None:
        self._stopped.set()
        self._commands.put(("wake", None))
        self._preparer.stop()
        if self._embedder is not None:
            self._embedder.stop()

    @property
    def slots_processing(self) -> int:
        busy = sum(1 for slot in self._slots if slot.busy) + len(self._waiting)
        busy += len(self._preparing)
        return busy + (self._embedder.pending if self._embedder else 0)

    def destinations(self) -> dict[str, str]:
        """Request id -> destination of everything in flight (any thread)."""
        jobs = [slot.job for slot in self._slots] + list(self._waiting)
        jobs += list(self._preparing.values())
        return {job.request_id: job.destination for job in jobs if job is not None}

    def slot_states(self) -> list[SlotReport]:
        """Per slot: busy or not, and the routing hashes of what it holds."""
        return [
            {"busy": slot.busy, "prefix": list(slot.prefix)} for slot in self._slots
        ]

    def close(self) -> None:
        self._preparer.stop()
        # Tokenizing is bounded and renders have a time budget, so this is
        # short; should it not be, the model is leaked rather than freed under
        # a thread still reading its vocabulary.
        if not self._preparer.join(timeout=10):
            logger.error("the preparer thread did not stop; model not freed")
            return
        for slot in self._slots:
            self._free_sampler(slot)
        if self._embedder is not None:
            self._embedder.close()
        if self.projection is not None:
            self.projection.close()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._context)
        llama_cpp.llama_model_free(self._model)

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool = True
    ) -> list[int]:
        """Tokens of ``text``; with ``parse_special`` false, special-token
        strings in it (``<end_of_turn>``) are tokenized as plain text."""
        return self._dedupe_bos(
            self._tokenize(text, add_special=add_special, parse_special=parse_special)
        )

    def tokenize_segments(self, segments: list[tuple[str, bool]]) -> list[int]:
        """Tokens of a rendered prompt cut into (text, from_a_message) pieces.

        Pieces from messages are tokenized with special-token parsing off, the
        template's own text with it on; the lists are concatenated.  Only the
        first piece gets the BOS token.  Cutting at the pieces' edges gives
        the same tokens as tokenizing the whole for the templates we know
        (turn markers and newlines are tokens of their own), which the tests
        check on the demo model.
        """
        tokens: list[int] = []
        for index, (text, literal) in enumerate(segments):
            tokens += self._tokenize(
                text, add_special=index == 0, parse_special=not literal
            )
        return self._dedupe_bos(tokens)

    def _tokenize(
        self, text: str, *, add_special: bool, parse_special: bool
    ) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), tokens, capacity, add_special, parse_special
        )
        if count < 0:
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self._vocab,
                data,
                len(data),
                tokens,
                capacity,
                add_special,
                parse_special,
            )
        return list(tokens[:count])

    def _dedupe_bos(self, result: list[int]) -> list[int]:
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        # A template that writes {{ bos_token }} itself must not get a second one.
        if len(result) >= 2 and result[0] == bos and result[1] == bos:
            result = result[1:]
        return result

    def run(self) -> None:
        """Serve until ``stop``; then fail whatever is still in flight."""
        self.warm_up()
        self.ready.set()
        if self._embedder is not None:
            self._embedder.start()
        self._preparer.start()
        try:
            while not self._stopped.is_set():
                self.beat = time.monotonic()
                idle = not any(slot.busy for slot in self._slots)
                self._drain_commands(block=idle)
                if self._stopped.is_set():
                    break
                self._admit_waiting()
                if any(slot.busy for slot in self._slots):
                    self._step_or_fail()
        except BaseException as error:
            # Not expected (each request's failures are caught below); the
            # worker's watchdog sees ``failure`` and reports the agent down.
            self.failure = f"{type(error).__name__}: {error}"
            logger.exception("the engine loop ended")
            raise
        finally:
            self._preparer.stop()
            outputs: list[Output] = []
            for slot in self._slots:
                if slot.job is not None:
                    outputs.append(
                        error_output(slot.job, 503, "agent is shutting down")
                    )
                    self._release(slot, keep_cache=False)
            for job in [*self._waiting, *self._preparing.values()]:
                outputs.append(error_output(job, 503, "agent is shutting down"))
            self._waiting.clear()
            self._preparing.clear()
            if outputs:
                self._on_output(outputs)

    def _drain_commands(self, *, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else None
        except queue.Empty:
            return
        while True:
            if command is not None:
                self._handle(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "submit":
            self._preparing[payload.request_id] = payload
            self._preparer.put(payload)
        elif kind == "prepared":
            job, prompt, failure = payload
            # A job cancelled while it was prepared is no longer in
            # ``_preparing``: its prompt is dropped.
            if self._preparing.pop(job.request_id, None) is None:
                job.close_images()
                return
            if failure is not None:
                job.close_images()
                self._on_output([failure])
            else:
                job.prompt = prompt
                self._waiting.append(job)
        elif kind == "cancel":
            self._preparing.pop(payload, None)
            for job in self._waiting:
                if job.request_id == payload:
                    job.close_images()
            self._waiting = [j for j in self._waiting if j.request_id != payload]
            for slot in self._slots:
                if slot.job is not None and slot.job.request_id == payload:
                    self._release(slot, keep_cache=True)

    def _on_prepared(
        self, job: Generation, prompt: list[PositionKey], failure: Output | None
    ) -> None:
        """On the preparer's thread: hand the prompt to the engine's loop,
        having the host tier read back from disk a state that extends it
        (``HostCache.prefetch``: the file read stays off the decode loop)."""
        if failure is None and self.host_cache.disk is not None:
            # The slots' caches as they are now, a hint only (the engine
            # thread may be changing them): a prompt a slot holds already
            # needs no file read.
            held = max(
                (common_prefix_length(list(s.cache), prompt) for s in self._slots),
                default=0,
            )
            # The tiers hold no state with an image in it (``_save_slot``):
            # only the text before a prompt's first image can match.
            text = leading_text(prompt)
            self.host_cache.prefetch(
                self.cache_namespace, text, held=min(held, len(text))
            )
        self._commands.put(("prepared", (job, prompt, failure)))

    def prompt_tokens(self, job: Generation) -> list[int]:
        """The token ids of ``job``'s prompt (one without images), with the
        current chat template."""
        tokens = text_only(self.prompt_keys(job))
        if tokens is None:
            job.close_images()
            raise ValueError("the prompt has images: use prompt_keys")
        return tokens

    def prompt_keys(self, job: Generation) -> list[PositionKey]:
        """The keys of ``job``'s prompt, one per position, with the current
        chat template (token ids, and an image's positions; see
        ``agents.image_prompt``)."""
        return prompt_keys(
            job,
            template=self.chat_template,
            variants=self.chat_template_variants,
            tokenizer=self,
            context_per_slot=self.context_per_slot,
            char_limit=self.prompt_char_limit,
            projection=self.projection,
            image_resize_to_fit=self.parameters.image_resize_to_fit,
        )

    def _admit_waiting(self) -> None:
        outputs: list[Output] = []
        while self._waiting:
            free = [slot for slot in self._slots if not slot.busy]
            if not free:
                break
            job = self._waiting.pop(0)
            try:
                failure = self._admit(job, free)
            except Exception as error:  # one request must not end the loop
                logger.exception("starting request %s failed", job.request_id)
                failure = error_output(job, 500, f"the request failed: {error}")
            if failure is not None:
                job.close_images()
                outputs.append(failure)
        if outputs:
            self._on_output(outputs)

    def _admit(self, job: Generation, free: list[Slot]) -> Output | None:
        """Start ``job`` on one of the ``free`` slots, or say why it cannot."""
        prompt = job.prompt
        if not prompt:
            return error_output(job, 400, "the prompt is empty")
        # Counted in positions: an image may take fewer than its tokens.
        if len(prompt) >= self.context_per_slot:
            images = "" if job.images is None else " (images included)"
            return error_output(
                job,
                400,
                f"the prompt is {len(prompt)} tokens{images}, but a slot's "
                f"context holds {self.context_per_slot}",
            )
        slot, restore = self._choose(free, prompt)
        try:
            sampler = sampler_chain(
                job,
                # Penalties see the prompt's text; an image has no token ids.
                text_tokens(prompt),
                parameters=self.parameters,
                vocab=self._vocab,
                context_per_slot=self.context_per_slot,
            )
        except GrammarTooComplex as error:
            return error_output(job, 400, f"grammar: {error}")
        except ValueError as error:
            return Output(
                job.destination,
                generation_failed_item(
                    job.request_id, "GrammarSyntaxError", str(error)
                ),
            )
        self._start(slot, job, prompt, sampler, restore)
        return None

    def _choose(
        self, free: list[Slot], prompt: list[PositionKey]
    ) -> tuple[Slot, tuple[Entry, int] | None]:
        """The free slot for ``prompt``, and the host-tier state to restore
        into it, if any: one that shares more of the prompt than every free
        slot's own cache.  A restore goes to the least recently used slot,
        not to one whose cache matches a little (a shared system prompt):
        that one may be the next turn's of another conversation."""
        own = max(common_prefix_length(slot.cache, prompt) for slot in free)
        tier = self.host_cache
        # A free slot that holds all the prompt but the token evaluated for
        # its logits needs no lookup (nor counts as one).
        if tier.enabled and own < len(prompt) - 1:
            # The tier holds no state with an image in it (``_save_slot``):
            # only the text before a prompt's first image can match.
            found = tier.find(self.cache_namespace, leading_text(prompt))
            # Worth a restore only when it spares a good many tokens more than
            # a slot's own cache: many conversations share a system prompt and
            # the template's first tokens, and one restored for a token or two
            # would evict a slot for nothing.
            if found is not None and found[1] >= own + tier.min_tokens:
                return least_recently_used(free), found
        return choose_slot(free, prompt), None

    def _start(
        self,
        slot: Slot,
        job: Generation,
        prompt: list[PositionKey],
        sampler: Any,
        restore: tuple[Entry, int] | None = None,
    ) -> None:
        keep = self._reuse(slot, prompt, restore)
        # At least one token must be evaluated to get logits for the first
        # sample; and an image is kept whole or not at all.
        keep = image_safe(prompt, min(keep, len(prompt) - 1))
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
            keep = 0
        slot.cache = prompt[:keep]
        slot.pending = prompt[keep:]
        slot.job = job
        slot.sampler = sampler
        # Usage counts text and image tokens apart, as Paddler does: of the
        # kept positions, ``cached_prompt_tokens`` counts the text tokens
        # (never more than ``prompt_tokens``); an image is kept with the text
        # around it or not at all.
        if job.images is None:
            slot.prompt_tokens, slot.image_tokens = len(prompt), 0
            slot.cached_tokens = keep
        else:
            slot.prompt_tokens = job.images.text_tokens
            slot.image_tokens = job.images.image_tokens
            slot.cached_tokens = len(text_tokens(prompt[:keep]))
        slot.generated = 0
        slot.told_slot = False
        slot.held_text = ""
        slot.text = ""
        slot.prefix = request_prefix(job.prefix_params())
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.started_at = time.monotonic()
        self._splitters[slot.seq_id] = splitter_for(job)

    def _reuse(
        self,
        slot: Slot,
        prompt: list[PositionKey],
        restore: tuple[Entry, int] | None,
    ) -> int:
        """How many leading tokens of ``prompt`` the slot holds once ready:
        its own cache's share, or that of ``restore`` (a host-tier state and
        the tokens it shares), restored into it.  Whatever of the slot's
        cache is about to be lost is saved to the host tier first.

        Both copies run here, on the engine thread, between two decode steps:
        llama.cpp's context is not safe to read while another thread decodes
        on it, so other slots wait for the copy (``bench.host_cache`` measures
        it: a memory copy of the sequence's cells, milliseconds per thousand
        tokens on the demo model).
        """
        own = common_prefix_length(slot.cache, prompt)
        tier = self.host_cache
        if restore is not None:
            entry, shared = restore
            self._save_slot(slot)
            elapsed_ms = self._restore(slot, entry)
            if elapsed_ms is None:
                return 0
            keep = min(shared, len(prompt) - 1)
            tier.restored(entry, keep, elapsed_ms=elapsed_ms)
            return shared
        if len(slot.cache) - min(own, len(prompt) - 1) >= MIN_LOST_TOKENS:
            # Another conversation takes the slot: what it holds goes to the
            # host tier.  (The same conversation's next turn loses at most the
            # few tokens its re-rendered answer differs in: nothing saved.)
            self._save_slot(slot)
        return own

    def _save_slot(self, slot: Slot) -> None:
        """Copy the slot's sequence state into the host tier, if worth it."""
        tier = self.host_cache
        if not tier.enabled or len(slot.cache) < tier.min_tokens:
            return
        # A state that holds an image is not stored: the tier is keyed by
        # token ids, and it may restore a state cut back to any length (see
        # ``host_cache.Entry.usable``), which would cut an image in two.  The
        # slot's own cache still serves the conversation's next turn.
        tokens = text_only(slot.cache)
        if tokens is None:
            return
        started = time.perf_counter()
        size = llama_cpp.llama_state_seq_get_size(self._context, slot.seq_id)
        if not tier.worth_saving(self.cache_namespace, tokens, size):
            return
        buffer = tier.take_buffer(size)
        if buffer is None:
            buffer = (ctypes.c_uint8 * buffer_size(size))()
        written = llama_cpp.llama_state_seq_get_data(
            self._context, buffer, size, slot.seq_id
        )
        if written != size:
            logger.warning(
                "saving slot %d's state wrote %d of %d bytes; not kept",
                slot.seq_id,
                written,
                size,
            )
            return
        tier.put(
            self.cache_namespace,
            tokens,
            buffer,
            size,
            slot.prefix,
            window=self._window,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    def _restore(self, slot: Slot, entry: Entry) -> float | None:
        """Load ``entry``'s state into the slot's sequence, in how many ms;
        None on failure, the sequence then empty and the entry dropped."""
        started = time.perf_counter()
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
        read = llama_cpp.llama_state_seq_set_data(
            self._context, entry.state, entry.size, slot.seq_id
        )
        if read != entry.size:
            logger.warning(
                "restoring %d tokens into slot %d failed; evaluating afresh",
                len(entry.tokens),
                slot.seq_id,
            )
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
            self.host_cache.discard(entry)
            slot.cache = []
            slot.prefix = []
            return None
        slot.cache = list(entry.tokens)
        return (time.perf_counter() - started) * 1000

    def _step_or_fail(self) -> None:
        """One step; an exception fails the requests of the step, not the loop."""
        try:
            self._step()
        except Exception as error:
            logger.exception("a decode step failed")
            outputs: list[Output] = []
            for slot in self._slots:
                if slot.job is not None:
                    outputs.append(
                        error_output(slot.job, 500, f"the decode step failed: {error}")
                    )
                    self._release(slot, keep_cache=False)
            self._on_output(outputs)

    def _step(self) -> None:
        outputs: list[Output] = []
        for slot in self._slots:
            if slot.job is not None and slot.pending:
                self._evaluate_image(slot, outputs)
        batch = self._batch
        count = 0

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal count
            batch.token[count] = token
            batch.pos[count] = pos
            batch.n_seq_id[count] = 1
            batch.seq_id[count][0] = seq_id
            batch.logits[count] = logits
            count += 1

        for slot in self._slots:
            slot.batch_index = -1
            if slot.job is not None and not slot.pending:
                slot.batch_index = count
                add(slot.next_token, len(slot.cache), slot.seq_id, True)
                slot.cache.append(slot.next_token)
        for slot in self._slots:
            if slot.job is None or not slot.pending or count >= self._n_batch:
                continue
            # Text up to the next image (evaluated at the next step's start).
            take = text_run(slot.pending, self._n_batch - count)
            chunk, slot.pending = slot.pending[:take], slot.pending[take:]
            for offset, token in enumerate(chunk):
                assert isinstance(token, int)
                last = not slot.pending and offset == take - 1
                if last:
                    slot.batch_index = count
                add(token, len(slot.cache), slot.seq_id, last)
                slot.cache.append(token)
        batch.n_tokens = count
        # Nothing to decode when every busy slot's next work was an image.
        status = llama_cpp.llama_decode(self._context, batch) if count else 0
        if status != 0:
            # The step's tokens are not in the cache: fail every request of it.
            for slot in self._slots:
                if slot.job is not None:
                    outputs.append(
                        error_output(slot.job, 500, f"llama_decode failed ({status})")
                    )
                    self._release(slot, keep_cache=False)
            self._on_output(outputs)
            return
        for slot in self._slots:
            if slot.job is None:
                continue
            if slot.batch_index >= 0:
                self._sample(slot, outputs)
            elif slot.pending:
                # A long prompt takes several steps before its first token:
                # tell the web tier the request is alive (it is not forwarded).
                outputs.append(
                    Output(
                        slot.job.destination,
                        progress_item(slot.job.request_id, len(slot.cache)),
                    )
                )
        if outputs:
            self._on_output(outputs)

    def _evaluate_image(self, slot: Slot, outputs: list[Output]) -> None:
        """Evaluate the image at the head of the slot's pending prompt, if
        any, alone: between two batch steps, in a batch of its own (libmtmd
        switches the context to non-causal attention for it).  One image per
        slot and step, so that other slots' tokens and cancellations are not
        held up by a prompt of many images.  A failure fails this request
        only, its sequence cleared."""
        job = slot.job
        assert job is not None
        head = slot.pending[0]
        if isinstance(head, int):
            return
        span = None if job.images is None else job.images.spans.get(len(slot.cache))
        try:
            if span is None:
                raise MultimodalError(
                    f"no image starts at position {len(slot.cache)} of the prompt"
                )
            span.evaluate(self._context, seq_id=slot.seq_id, n_batch=self._n_batch)
        except Exception as error:  # libmtmd or llama.cpp: this request only
            logger.warning("request %s: %s", job.request_id, error)
            outputs.append(error_output(job, 500, str(error)))
            self._release(slot, keep_cache=False)
            return
        slot.cache.extend(slot.pending[: span.n_pos])
        slot.pending = slot.pending[span.n_pos :]

    def _sample(self, slot: Slot, outputs: list[Output]) -> None:
        job, decoder = slot.job, slot.decoder
        assert job is not None and decoder is not None
        token = llama_cpp.llama_sampler_sample(
            slot.sampler, self._context, slot.batch_index
        )
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, outputs)
            return
        slot.generated += 1
        slot.next_token = token
        splitter = self._splitters[slot.seq_id]
        piece = self._piece_bytes(token, special=splitter.wants_special_tokens)
        text = slot.held_text + decoder.decode(piece)
        sendable, slot.held_text, stopped = split_on_stop(text, job.stop)
        if sendable:
            slot.text += sendable
            for item in splitter.feed(sendable):
                output = Output(job.destination, item)
                if not slot.told_slot:
                    # The web tier logs the slot even if the request is cancelled.
                    output.item["meta"] = {"slot": slot.seq_id}
                    slot.told_slot = True
                outputs.append(output)
        if (
            stopped
            or slot.generated >= job.max_tokens
            # The next token would not fit in the slot's context.
            or len(slot.cache) + 1 >= self.context_per_slot
        ):
            if stopped:
                slot.held_text = ""
            self._finish(slot, outputs)

    def _finish(self, slot: Slot, outputs: list[Output]) -> None:
        job, decoder = slot.job, slot.decoder
        assert job is not None and decoder is not None
        rest = slot.held_text + decoder.decode(b"", final=True)
        splitter = self._splitters.pop(slot.seq_id)
        items = splitter.feed(rest) if rest else []
        slot.text += rest
        items += splitter.finish()
        outputs.extend(Output(job.destination, item) for item in items)
        reasoning, tool_call = splitter.reasoning_tokens, splitter.tool_call_tokens
        usage: Usage = {
            "prompt_tokens": slot.prompt_tokens,
            "cached_prompt_tokens": slot.cached_tokens,
            "input_image_tokens": slot.image_tokens,
            "input_audio_tokens": 0,
            "content_tokens": slot.generated - reasoning - tool_call,
            "reasoning_tokens": reasoning,
            "tool_call_tokens": tool_call,
            "undeterminable_tokens": 0,
        }
        outputs.append(
            Output(job.destination, done_item(job.request_id, usage, slot=slot.seq_id))
        )
        slot.prefix = served_prefix(job.prefix_params(), slot.text)
        self._release(slot, keep_cache=True)

    def _release(self, slot: Slot, *, keep_cache: bool) -> None:
        if not keep_cache or slot.pending:
            # A half-evaluated prompt leaves the cache in an unknown state.
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
            slot.cache = []
            slot.prefix = []
        slot.pending = []
        if slot.job is not None:
            slot.job.close_images()
        slot.job = None
        self._splitters.pop(slot.seq_id, None)
        slot.released_at = time.monotonic()
        self._free_sampler(slot)

    def _free_sampler(self, slot: Slot) -> None:
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None

    def _piece_bytes(self, token: int, *, special: bool = False) -> bytes:
        # ``special``: control tokens as their text, for output whose markers
        # (harmony's <|channel|>, some <think>s) are special tokens.
        size = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._piece, len(self._piece), 0, special
        )
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(
                self._vocab, token, buffer, -size, 0, special
            )
            return buffer.raw[:size]
        return self._piece.raw[:size]

    def _longest_piece(self) -> int:
        longest = 1
        for token in range(llama_cpp.llama_vocab_n_tokens(self._vocab)):
            size = llama_cpp.llama_token_to_piece(
                self._vocab, token, self._piece, len(self._piece), 0, True
            )
            longest = max(longest, abs(size))
        return longest

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        size = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._piece, len(self._piece), 0, True
        )
        return self._piece.raw[: max(size, 0)].decode("utf-8", "replace")

    def _read_metadata(self) -> dict[str, str]:
        metadata: dict[str, str] = {}
        buffer = ctypes.create_string_buffer(1 << 20)
        for index in range(llama_cpp.llama_model_meta_count(self._model)):
            size = llama_cpp.llama_model_meta_key_by_index(
                self._model, index, buffer, len(buffer)
            )
            key = buffer.raw[: max(size, 0)].decode("utf-8", "replace")
            size = llama_cpp.llama_model_meta_val_str_by_index(
                self._model, index, buffer, len(buffer)
            )
            metadata[key] = buffer.raw[: max(min(size, len(buffer) - 1), 0)].decode(
                "utf-8", "replace"
            )
        return metadata
