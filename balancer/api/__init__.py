"""The management API on Django REST framework: authentication, permissions,
parsing, error shapes and the views of the desired state, agents and the log.

The Server-Sent Events streams and ``/metrics`` stay plain async Django views
(``balancer.views``): DRF runs views synchronously and renders whole bodies.
"""
