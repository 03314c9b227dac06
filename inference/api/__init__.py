"""Management of inference API keys on DRF (list, create, revoke).

The keys are the client tier's, so their endpoints live here rather than in
``balancer.api``, whose authentication and permissions they use.
"""
