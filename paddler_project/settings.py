"""Settings for every process of the platform: web tier (daphne) and agents.

Everything deploy-specific comes from the environment (``PADDLER_*``,
``DATABASE_URL``, ``REDIS_URL``); the defaults run locally.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from paddler_project.env import (
    env_bool,
    env_choice,
    env_float,
    env_host_port,
    env_hosts,
    env_int,
    env_list,
    env_origins,
    env_redis_url,
    env_sentinels,
    env_str,
    redis_master_options,
)

# Lets classes like ModelAdmin be subscripted for the type checker.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("PADDLER_DEBUG", False)
# Without a configured key every process makes its own: sessions then do not
# survive a restart nor work across replicas, which is fine for a laptop only
# (the web tier says so at start: paddler_project.asgi).
PADDLER_SECRET_KEY_IS_SET = bool(env_str("PADDLER_SECRET_KEY", ""))
SECRET_KEY = env_str("PADDLER_SECRET_KEY", "") or secrets.token_urlsafe(50)
ALLOWED_HOSTS = env_list("PADDLER_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("PADDLER_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "inference",
    "balancer",
    "agents",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "paddler_project.cors.ManagementCorsMiddleware",
    "paddler_project.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The inference endpoints (paddler_project.handlers.INFERENCE_PATHS) take no
# cookies, sessions or forms: they go through this shorter stack, all of it on
# the event loop (see paddler_project.middleware).  Without CommonMiddleware
# nothing in it reads the Host header, so the host check is its own.
INFERENCE_MIDDLEWARE = [
    "paddler_project.middleware.AllowedHostMiddleware",
    "paddler_project.cors.InferenceCorsMiddleware",
    "paddler_project.middleware.SecurityMiddleware",
]

ROOT_URLCONF = "paddler_project.urls"
ASGI_APPLICATION = "paddler_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "balancer.panel.pools.pool_context",
            ],
        },
    },
]

try:
    DATABASES = {
        "default": dj_database_url.parse(
            env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}"),
            conn_max_age=0,
        )
    }
except ValueError as error:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid URL: {error}") from None

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

# Whitenoise serves static files from the apps and static/ as well as from
# STATIC_ROOT, so the panel works without collectstatic (tests, laptops).
WHITENOISE_USE_FINDERS = True

# The panel's login (staff only); Django's admin stays at /admin/.
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

REDIS_URL = env_redis_url("REDIS_URL", "redis://127.0.0.1:6379/0")

# Options of every Redis connection (ours and the channel layer's).  After a
# Redis restart a pooled connection is dead: the command is retried on a new
# one instead of failing the request.  The socket timeout is above the 5 s
# blocking reads of the channel layer (redis-py's default is also 5 s).
#
# Connections per pool.  redis-py's asyncio pools fail a command at once when
# all their connections are in use (100 by default): a burst of 256 requests
# on one web process got 156 answers of 503.  Our own clients
# (``balancer.redis_connection``) use a blocking pool of at most
# PADDLER_REDIS_MAX_CONNECTIONS, where a command waits up to
# ``REDIS_POOL_WAIT_S`` for a connection to come back; pools we cannot make
# blocking (the channel layer's, and the clients of a Sentinel master) may
# grow to ``REDIS_MAX_POOL_CONNECTIONS``, Redis's own default client limit.
PADDLER_REDIS_MAX_CONNECTIONS = env_int("PADDLER_REDIS_MAX_CONNECTIONS", 512, minimum=1)
REDIS_POOL_WAIT_S = 10.0
REDIS_MAX_POOL_CONNECTIONS = 10_000
REDIS_OPTIONS: dict[str, Any] = {
    "socket_timeout": 30,
    "health_check_interval": 15,
    "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
    "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    "max_connections": REDIS_MAX_POOL_CONNECTIONS,
}

# Redis Sentinel (docs/sentinel.md): with sentinels set, every Redis client
# (the web tier's, the agents', the channel layer's) asks them for the
# current master of PADDLER_REDIS_SENTINEL_MASTER and follows a failover.
# REDIS_URL then gives only the master's database number and credentials.
PADDLER_REDIS_SENTINELS = env_sentinels("PADDLER_REDIS_SENTINELS")
PADDLER_REDIS_SENTINEL_MASTER = env_str("PADDLER_REDIS_SENTINEL_MASTER", "mymaster")
if PADDLER_REDIS_SENTINELS and not PADDLER_REDIS_SENTINEL_MASTER.strip():
    raise ImproperlyConfigured(
        "PADDLER_REDIS_SENTINEL_MASTER must name the master the sentinels "
        "monitor, got an empty name"
    )
# The sentinels' own password, when they have one (``requirepass`` in their
# configuration); the master's comes from REDIS_URL.
PADDLER_REDIS_SENTINEL_PASSWORD = env_str("PADDLER_REDIS_SENTINEL_PASSWORD", "")
# What a Sentinel client passes to the master's connections: REDIS_URL's
# database and credentials (its host and port are the sentinels' to say).
REDIS_MASTER_OPTIONS: dict[str, Any] = (
    redis_master_options(REDIS_URL) if PADDLER_REDIS_SENTINELS else {}
)
# Sentinels answer fast or not at all: a dead one is skipped quickly.
REDIS_SENTINEL_OPTIONS: dict[str, Any] = {
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
    **(
        {"password": PADDLER_REDIS_SENTINEL_PASSWORD}
        if PADDLER_REDIS_SENTINEL_PASSWORD
        else {}
    ),
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "sentinels": PADDLER_REDIS_SENTINELS,
                    "master_name": PADDLER_REDIS_SENTINEL_MASTER,
                    "sentinel_kwargs": REDIS_SENTINEL_OPTIONS,
                    **REDIS_MASTER_OPTIONS,
                    **REDIS_OPTIONS,
                }
                if PADDLER_REDIS_SENTINELS
                else {"address": REDIS_URL, **REDIS_OPTIONS}
            ],
            "prefix": "paddler:layer:",
            # An agent's channel never holds more requests than the agent has
            # slots (each needs a claim first), plus cancels: the layer's
            # default bound of 100 messages turned a burst on an agent of
            # more slots into errors.
            "capacity": 100_000,
        },
    }
}

# The management API (balancer.api): the token or a staff session; staff
# change things only with the model permission a view names.  JSON first, so
# that clients sending "Accept: */*" get JSON; a browser gets the browsable API.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "balancer.api.authentication.ManagementTokenAuthentication",
        "balancer.api.authentication.StaffSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["balancer.api.permissions.IsOperator"],
    "DEFAULT_PARSER_CLASSES": ["balancer.api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "balancer.api.renderers.PaddlerJSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "balancer.api.exceptions.management_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI schema (/api/schema/) and its Swagger UI (/api/docs/), served to
# anyone: it documents what Paddler's own documentation does, and holds no
# data.  The UI's files come from drf-spectacular-sidecar, not a CDN.
SPECTACULAR_SETTINGS = {
    "TITLE": "Paddler-compatible LLMOps platform",
    "DESCRIPTION": "Paddler's inference and management APIs, the "
    "OpenAI-compatible API, and our management extensions.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One enum for both caches' types, and one for the agents' statuses.
    "ENUM_NAME_OVERRIDES": {
        "KvCacheDtypeEnum": "balancer.desired_state.KV_CACHE_DTYPES",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "paddler_project.openapi.add_plain_views",
    ],
    "TAGS": [
        {"name": "inference", "description": "Paddler's inference API"},
        {"name": "openai", "description": "The OpenAI-compatible API"},
        {"name": "management", "description": "Paddler's management API, and ours"},
    ],
}

# Web pages on other origins (scheme://host[:port], or "*") that may call the
# inference and OpenAI APIs, and the management API, from a browser (CORS,
# paddler_project/cors.py).  Empty: none may.
PADDLER_CORS_ALLOWED_ORIGINS = env_origins("PADDLER_CORS_ALLOWED_ORIGINS")
PADDLER_MANAGEMENT_CORS_ALLOWED_ORIGINS = env_origins(
    "PADDLER_MANAGEMENT_CORS_ALLOWED_ORIGINS"
)
# What a browser may send and read across origins: Paddler's clients send
# their key as a bearer token and JSON bodies (django-cors-headers' defaults).
CORS_ALLOW_CREDENTIALS = False

# Management API: a bearer token, or a logged-in staff session.
PADDLER_MANAGEMENT_TOKEN = env_str("PADDLER_MANAGEMENT_TOKEN", "")
# Buffer of requests that wait for a free slot (global across web replicas).
PADDLER_MAX_BUFFERED_REQUESTS = env_int("PADDLER_MAX_BUFFERED_REQUESTS", 30, minimum=0)
PADDLER_BUFFERED_REQUEST_TIMEOUT_MS = env_int(
    "PADDLER_BUFFERED_REQUEST_TIMEOUT_MS", 10_000, minimum=1
)
# Longest wait for the next token of a stream before it ends with 504.
PADDLER_INFERENCE_ITEM_TIMEOUT_MS = env_int(
    "PADDLER_INFERENCE_ITEM_TIMEOUT_MS", 30_000, minimum=1
)
# Routing: "prefix" (conversation-aware), "least_busy" or "round_robin".
PADDLER_ROUTING_POLICY = env_choice(
    "PADDLER_ROUTING_POLICY", "prefix", ("prefix", "least_busy", "round_robin")
)
# A cache match is ignored when its agent's load (busy slots / slots) exceeds
# the least busy agent's by this much or more.
PADDLER_ROUTING_MAX_LOAD_GAP = env_float(
    "PADDLER_ROUTING_MAX_LOAD_GAP", 0.5, minimum=0.0
)
# A buffered request whose conversation's cache is on one agent waits for a
# slot there; after this long it also takes a spare slot elsewhere, one no
# other waiter wants (see balancer.registry); 0: it never waits for its agent.
PADDLER_ROUTING_CACHE_WAIT_MS = env_int(
    "PADDLER_ROUTING_CACHE_WAIT_MS", 1_000, minimum=0
)
# Embedding batches are split into chunks of at most this many documents,
# which agents embed in parallel (fewer when that spreads a batch wider).
PADDLER_EMBEDDING_CHUNK_SIZE = env_int("PADDLER_EMBEDDING_CHUNK_SIZE", 32, minimum=1)
# How many finished requests the request log keeps (for the panel).
PADDLER_REQUEST_LOG_SIZE = env_int("PADDLER_REQUEST_LOG_SIZE", 1000, minimum=0)
# An agent whose heartbeat is older than this is dropped from the registry.
PADDLER_AGENT_TTL_MS = env_int("PADDLER_AGENT_TTL_MS", 3_000, minimum=500)
# Host memory (MiB) an agent keeps for the KV caches of conversations whose
# slot was taken by another (agents.host_cache); 0 turns the tier off.
# ``run_agent --cache-ram-mb`` overrides it.
PADDLER_AGENT_CACHE_RAM_MB = env_int("PADDLER_AGENT_CACHE_RAM_MB", 2048, minimum=0)
# The optional disk tier below it (agents.disk_cache): a directory of the
# agent's own on a fast local disk (empty: no disk tier), and the most it may
# hold (MiB).  ``run_agent --cache-dir`` and ``--cache-disk-mb`` override them.
PADDLER_AGENT_CACHE_DIR = env_str("PADDLER_AGENT_CACHE_DIR", "")
PADDLER_AGENT_CACHE_DISK_MB = env_int("PADDLER_AGENT_CACHE_DISK_MB", 16384, minimum=0)
# Largest accepted request body, in bytes.
PADDLER_MAX_REQUEST_BYTES = env_int(
    "PADDLER_MAX_REQUEST_BYTES", 4 * 1024 * 1024, minimum=1024
)
# A client that leaves more than this much of its stream unread (a reader
# that stalled, or reads slower than tokens come) is cut off, and its request
# cancelled: see paddler_project/connections.py.
PADDLER_MAX_CLIENT_BUFFER_BYTES = env_int(
    "PADDLER_MAX_CLIENT_BUFFER_BYTES", 4 * 1024 * 1024, minimum=4096
)
# Management event streams (SSE) send a comment after this long without a
# change, so that proxies do not close an idle stream.
PADDLER_SSE_KEEPALIVE_MS = env_int("PADDLER_SSE_KEEPALIVE_MS", 10_000, minimum=100)
# Django refuses bodies above this before our views see them (with a 400);
# the inference views answer 413 themselves, so let Django read up to our limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = PADDLER_MAX_REQUEST_BYTES
# Bearer keys of the inference and OpenAI APIs, besides the keys kept (hashed)
# in the database.  With none of either, those APIs are open.
PADDLER_INFERENCE_API_KEYS = env_list("PADDLER_INFERENCE_API_KEYS", [])
PADDLER_CACHE_DIR = env_str(
    "PADDLER_CACHE_DIR", str(Path.home() / ".cache" / "paddler")
)
# URL and Hugging Face model sources reach only public addresses, except these
# hosts the operator trusts (agents/model_source.py says why).
PADDLER_MODEL_SOURCE_ALLOWED_HOSTS = env_hosts("PADDLER_MODEL_SOURCE_ALLOWED_HOSTS")
# Above any single GGUF file (Hugging Face takes none over 50 GB, so larger
# models come split); it bounds an endless or lying download, not the disk.
PADDLER_MODEL_MAX_BYTES = env_int("PADDLER_MODEL_MAX_BYTES", 256 << 30, minimum=1)
# Images in requests (inference/image_parts.py): the largest one image may be
# (a data: URL's payload or a fetched body; 413 above), and all of a
# request's together.  A data: URL also counts against
# PADDLER_MAX_REQUEST_BYTES, as base64 (4/3 of the image): raise that too to
# take images over about 3 MiB inline.
PADDLER_MAX_IMAGE_BYTES = env_int("PADDLER_MAX_IMAGE_BYTES", 20 << 20, minimum=1)
PADDLER_MAX_REQUEST_IMAGE_BYTES = env_int(
    "PADDLER_MAX_REQUEST_IMAGE_BYTES", 32 << 20, minimum=1
)
# Images named by http(s) URL are fetched by the web tier within this budget
# (all of a request's images together), from public addresses only, except
# these hosts the operator trusts (inference/image_fetch.py says why).
PADDLER_IMAGE_FETCH_TIMEOUT_MS = env_int(
    "PADDLER_IMAGE_FETCH_TIMEOUT_MS", 10_000, minimum=100
)
PADDLER_IMAGE_FETCH_ALLOWED_HOSTS = env_hosts("PADDLER_IMAGE_FETCH_ALLOWED_HOSTS")

# StatsD: fleet gauges every interval, request counters and timings, and
# django-statsd's HTTP timings.  Unset address: off.
PADDLER_STATSD_ADDR = env_host_port("PADDLER_STATSD_ADDR")
PADDLER_STATSD_PREFIX = env_str("PADDLER_STATSD_PREFIX", "paddler")
PADDLER_STATSD_INTERVAL_MS = env_int("PADDLER_STATSD_INTERVAL_MS", 10_000, minimum=100)
STATSD_DISABLED = not PADDLER_STATSD_ADDR
STATSD_HOST = PADDLER_STATSD_ADDR.rpartition(":")[0] or "127.0.0.1"
STATSD_PORT = int(PADDLER_STATSD_ADDR.rpartition(":")[2] or 8125)
STATSD_PREFIX = f"{PADDLER_STATSD_PREFIX}.http"
if PADDLER_STATSD_ADDR:
    for stack in (MIDDLEWARE, INFERENCE_MIDDLEWARE):
        stack.insert(0, "django_statsd.middleware.StatsdMiddleware")
        stack.append("django_statsd.middleware.StatsdMiddlewareTimer")

# Production: behind a TLS-terminating proxy, with secure cookies and HSTS.
# `manage.py check --deploy` is clean with the values the README gives.
PADDLER_SECURE_COOKIES = env_bool("PADDLER_SECURE_COOKIES", False)
SESSION_COOKIE_SECURE = PADDLER_SECURE_COOKIES
CSRF_COOKIE_SECURE = PADDLER_SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
if env_bool("PADDLER_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("PADDLER_SSL_REDIRECT", False)
# Health checks come over plain HTTP from inside the deployment.
SECURE_REDIRECT_EXEMPT = [r"^health$"]
SECURE_HSTS_SECONDS = env_int("PADDLER_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("PADDLER_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("PADDLER_HSTS_PRELOAD", True)
X_FRAME_OPTIONS = "DENY"

LOG_FORMAT = env_choice("PADDLER_LOG_FORMAT", "plain", ("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "paddler_project.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}
    },
    "root": {"handlers": ["console"], "level": env_str("PADDLER_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # python-statsd logs every metric it sends at INFO, and every lost
        # datagram (StatsD down: refused) as an error with a traceback; losing
        # a metric is acceptable, so neither belongs in the log.
        "statsd": {"level": "CRITICAL"},
    },
}

# Login attempts (the panel's and the admin's), per username and per client
# address, counted in Redis across web replicas: after this many failures
# within the window, attempts are refused (429) until the window ends.
PADDLER_LOGIN_MAX_FAILURES = env_int("PADDLER_LOGIN_MAX_FAILURES", 10, minimum=1)
PADDLER_LOGIN_FAILURE_WINDOW_S = env_int(
    "PADDLER_LOGIN_FAILURE_WINDOW_S", 300, minimum=1
)

# The web edge against hostile clients (paddler_project/request_limits.py,
# paddler_project/middleware.py, inference/socket_admission.py).
# A request whose headers and body have not arrived whole this long after its
# first line gets 408: a client trickling a body in cannot hold a connection.
PADDLER_REQUEST_READ_TIMEOUT_MS = env_int(
    "PADDLER_REQUEST_READ_TIMEOUT_MS", 30_000, minimum=100
)
# Pages (scheme://host[:port]) besides this site's own that may open the
# inference socket while the inference APIs need no key; "*" allows any.
PADDLER_ALLOWED_ORIGINS = env_list("PADDLER_ALLOWED_ORIGINS", [])
