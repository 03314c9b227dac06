"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions,
/v1/embeddings and /v1/models.

``requests`` checks a body and translates it for the agents, ``output`` reads
what the agents send back, ``responses`` shapes OpenAI's objects from it,
``listing`` names the models served, ``errors`` is the error every part may
raise, and ``views`` ties them to the dispatcher.
"""
