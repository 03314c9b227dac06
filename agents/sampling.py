"""A request's sampling settings as a llama.cpp sampler chain."""

from __future__ import annotations

from typing import Any

import llama_cpp

from agents.jobs import Generation
from balancer.desired_state import InferenceParameters
from balancer.grammar_limits import GrammarTooComplex, check_gbnf


def sampler_chain(
    job: Generation,
    prompt: list[int],
    *,
    parameters: InferenceParameters,
    vocab: Any,
    context_per_slot: int,
) -> Any:
    """A new llama.cpp sampler chain for ``job``; the caller frees it.

    Raises ``GrammarTooComplex`` for a grammar past a limit and ValueError for
    one llama.cpp cannot parse.
    """
    p = parameters
    chain = llama_cpp.llama_sampler_chain_init(
        llama_cpp.llama_sampler_chain_default_params()
    )
    add = llama_cpp.llama_sampler_chain_add
    last_n = context_per_slot if p.penalty_last_n == -1 else p.penalty_last_n
    if (
        p.penalty_repeat != 1.0
        or p.penalty_frequency != 0.0
        or p.penalty_presence != 0.0
    ):
        add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                llama_cpp.llama_vocab_n_tokens(vocab),
                last_n,
                p.penalty_repeat,
                p.penalty_frequency,
                p.penalty_presence,
            ),
        )
        # The prompt goes into the penalty window, as llama.cpp's server
        # does.  This happens before the grammar joins the chain: the
        # grammar constrains the output only, and would reject the prompt.
        for token in prompt:
            llama_cpp.llama_sampler_accept(chain, token)
    if job.grammar:
        try:
            # llama.cpp's parser recurses per nested group: a deep grammar
            # would crash the process, so it never gets one.
            check_gbnf(job.grammar)
        except GrammarTooComplex:
            llama_cpp.llama_sampler_free(chain)
            raise
        grammar = llama_cpp.llama_sampler_init_grammar(
            vocab, job.grammar.encode(), job.grammar_root.encode()
        )
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise ValueError("the grammar does not parse")
        add(chain, grammar)
    temperature = p.temperature if job.temperature is None else job.temperature
    if temperature <= 0.0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    top_p = p.top_p if job.top_p is None else job.top_p
    if p.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
    add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
    add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(temperature))
    seed = job.seed if job.seed is not None else 0xFFFFFFFF  # random seed
    add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
