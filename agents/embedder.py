"""Embeddings: a second llama.cpp context on the engine's model, on a thread of
its own, so documents are embedded while other requests generate."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import llama_cpp

from agents.jobs import (
    EmbeddingJob,
    ModelLoadError,
    Output,
    error_output,
)
from balancer.contract import (
    Normalization,
    OutputItem,
    document_embedding_item,
    document_failed_item,
    embedding_done_item,
)
from balancer.desired_state import InferenceParameters

logger = logging.getLogger(__name__)

_POOLING_TYPES = {
    "Unspecified": -1,
    "None": 0,
    "Mean": 1,
    "Cls": 2,
    "Last": 3,
    "Rank": 4,
}


def normalize(vector: list[float], method: Normalization) -> list[float]:
    """Paddler's normalizations: "L2", "None" or {"RmsNorm": {"epsilon": e}}."""
    if method == "L2":
        norm = sum(v * v for v in vector) ** 0.5
        return [v / norm for v in vector] if norm > 0 else vector
    if isinstance(method, dict):
        epsilon = method["RmsNorm"]["epsilon"]
        scale = (sum(v * v for v in vector) / len(vector) + epsilon) ** 0.5
        return [v / scale for v in vector]
    return vector


class Embedder:
    """A second context on the same model, for embeddings, with its own thread.

    Generation and embeddings run side by side: unlike Paddler, an agent does
    not refuse embeddings while it generates.  Documents are packed into
    batches of at most ``embedding_batch_size`` tokens, one sequence each.
    """

    MAX_SEQUENCES = 16

    def __init__(
        self,
        *,
        model: Any,
        vocab: Any,
        parameters: InferenceParameters,
        threads: int,
        on_output: Callable[[list[Output]], None],
        tokenize: Callable[..., list[int]],
    ) -> None:
        self._on_output = on_output
        self._tokenize = tokenize
        self._jobs: queue.Queue[EmbeddingJob | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.pending = 0
        self.pooling_name = parameters.pooling_type
        self.batch_size = parameters.embedding_batch_size
        self._n_embd = llama_cpp.llama_model_n_embd(model)
        params = llama_cpp.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = _POOLING_TYPES[parameters.pooling_type]
        params.n_ctx = self.batch_size
        params.n_batch = self.batch_size
        params.n_ubatch = self.batch_size
        params.n_seq_max = self.MAX_SEQUENCES
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = True
        params.no_perf = True
        self._context = llama_cpp.llama_init_from_model(model, params)
        if not self._context:
            raise ModelLoadError("llama.cpp could not create the embedding context")
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._batch = llama_cpp.llama_batch_init(self.batch_size, 0, 1)
        self._thread = threading.Thread(
            target=self._run, name="paddler-embedder", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: EmbeddingJob) -> None:
        with self._lock:
            self.pending += 1
        self._jobs.put(job)

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)

    def stop(self) -> None:
        self._jobs.put(None)

    def close(self) -> None:
        if self._thread.is_alive():
            self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._context)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                self._embed(job)
            except Exception as error:  # never let one request kill the thread
                logger.exception("embedding failed")
                self._on_output([error_output(job, 500, str(error))])
            finally:
                with self._lock:
                    self.pending -= 1
                    self._cancelled.discard(job.request_id)
        # Fail what was still queued when the agent stopped.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._on_output([error_output(job, 503, "agent is shutting down")])

    def _embed(self, job: EmbeddingJob) -> None:
        if self.pooling_name in ("None", "Unspecified"):
            # Without pooling llama.cpp gives one vector per token, not one per
            # document; "Unspecified" means the model's own, which for a
            # generative model is none.
            self._on_output(
                [
                    error_output(
                        job,
                        400,
                        f"pooling_type {self.pooling_name} gives no document "
                        "vector; set Mean, Cls or Last",
                    )
                ]
            )
            return
        pending: list[tuple[str, list[int]]] = []
        for document_id, text in job.documents:
            tokens = self._tokenize(text, add_special=True)
            if len(tokens) > self.batch_size:
                self._emit(
                    job,
                    document_failed_item(
                        job.request_id,
                        f"document {document_id} is {len(tokens)} tokens, more "
                        f"than the embedding batch of {self.batch_size}",
                    ),
                )
                continue
            if not tokens:
                self._emit(
                    job,
                    document_failed_item(
                        job.request_id, f"document {document_id} is empty"
                    ),
                )
                continue
            pending.append((document_id, tokens))
        group: list[tuple[str, list[int]]] = []
        used = 0
        for document in pending:
            if group and (
                used + len(document[1]) > self.batch_size
                or len(group) == self.MAX_SEQUENCES
            ):
                if not self._embed_group(job, group):
                    return
                group, used = [], 0
            group.append(document)
            used += len(document[1])
        if group and not self._embed_group(job, group):
            return
        # The tokens read, for usage figures (OpenAI's usage, the request log).
        done = embedding_done_item(
            job.request_id, prompt_tokens=sum(len(t) for _, t in pending)
        )
        self._on_output([Output(job.destination, done)])

    def _emit(self, job: EmbeddingJob, item: OutputItem) -> None:
        self._on_output([Output(job.destination, item)])

    def _embed_group(
        self, job: EmbeddingJob, group: list[tuple[str, list[int]]]
    ) -> bool:
        """Embed one batch of documents; False when the request was cancelled."""
        with self._lock:
            if job.request_id in self._cancelled:
                return False
        llama_cpp.llama_memory_clear(self._memory, True)
        batch = self._batch
        count = 0
        for seq_id, (_, tokens) in enumerate(group):
            for position, token in enumerate(tokens):
                batch.token[count] = token
                batch.pos[count] = position
                batch.n_seq_id[count] = 1
                batch.seq_id[count][0] = seq_id
                batch.logits[count] = True
                count += 1
        batch.n_tokens = count
        status = llama_cpp.llama_decode(self._context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status}) while embedding")
        outputs: list[Output] = []
        for seq_id, (document_id, _) in enumerate(group):
            pointer = llama_cpp.llama_get_embeddings_seq(self._context, seq_id)
            if not pointer:
                raise RuntimeError("the model gave no pooled embedding")
            vector = normalize(list(pointer[: self._n_embd]), job.normalization)
            outputs.append(
                Output(
                    job.destination,
                    document_embedding_item(
                        job.request_id,
                        source_document_id=document_id,
                        embedding=vector,
                        normalization_method=job.normalization,
                        pooling_type=self.pooling_name,
                    ),
                )
            )
        self._on_output(outputs)
        return True
