"""Portal settings: one module, every value read from the environment through django-environ.

Defaults make `make run` work on a laptop; production (`DEBUG=0`) refuses to start with a missing or
insecure `SECRET_KEY`. Every variable is documented in README.md.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)

_INSECURE_DEV_KEY = "django-insecure-development-only-key-never-use-this-one-in-production"


def _secret_key() -> str:
    """A production secret must be long, varied and not Django's insecure placeholder."""
    key = env.str("SECRET_KEY", default="")
    if DEBUG:
        return key or _INSECURE_DEV_KEY
    if not key:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG=0.")
    if len(key) < 50 or len(set(key)) < 5 or key.startswith("django-insecure-"):
        raise ImproperlyConfigured(
            "SECRET_KEY is insecure: use at least 50 random characters "
            "(python -c 'import secrets; print(secrets.token_urlsafe(64))')."
        )
    return key


SECRET_KEY = _secret_key()


def _required_url(name: str) -> str:
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(
            f"{name} is not set. Start the portal through `make run` / `make test` "
            f"(python -m config.devstack), which provides embedded services, or export {name}."
        )
    return value


# --- Hosts and tenancy -------------------------------------------------------------------------

PORTAL_DOMAIN = env.str("PORTAL_DOMAIN", default="localhost")
PORTAL_BASE_URL = env.str("PORTAL_BASE_URL", default=f"http://{PORTAL_DOMAIN}:8000").rstrip("/")
ALLOWED_HOSTS = [PORTAL_DOMAIN, f".{PORTAL_DOMAIN}", *env.list("ALLOWED_HOSTS", default=[])]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
RESERVED_TENANT_SLUGS = frozenset(
    {"public", "www", "admin", "api", "app", "static", "media", "mail", "portal", "mlflow"}
)

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_URLCONF = "config.urls_public"
ROOT_URLCONF = "config.urls_tenant"
DEFAULT_NOT_FOUND_TENANT_VIEW = "apps.tenants.views.TenantNotFoundView"
# `SET search_path` once per tenant switch (each request and task), not before every statement: django-tenants
# re-issues it after `set_tenant`, a rollback or a new connection. One round trip to PostgreSQL a query saved.
TENANT_LIMIT_SET_CALLS = True

# Public schema: tenants, domains and platform staff. Tenant schemas: each tenant's own users,
# groups, sessions, admin log, login attempts and audit log. Apps listed in both lists get tables
# in both, so platform staff and their audit trail live in public and tenants never share rows.
SHARED_APPS = [
    "django_tenants",
    "apps.tenants",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "apps.accounts.admin_config.TwoFactorAdminConfig",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.accounts",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "auditlog",
    "axes",
    "apps.monitoring",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "apps.accounts.admin_config.TwoFactorAdminConfig",
    "apps.accounts",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "auditlog",
    "axes",
    "apps.apikeys",
    "apps.registry",
    "apps.serving",
    "apps.inference",
    "apps.compliance",
    "apps.api",
    "apps.portal",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

MIDDLEWARE = [
    "apps.api.middleware.RequestIdMiddleware",
    "apps.tenants.middleware.CachedTenantMiddleware",
    "apps.tenants.middleware.TenantStatusMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "auditlog.middleware.AuditlogMiddleware",
    "axes.middleware.AxesMiddleware",
    "apps.api.middleware.ApiErrorMiddleware",
]

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
                "apps.tenants.context_processors.portal",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

# --- Data stores --------------------------------------------------------------------------------

DATABASES = {"default": env.db_url_config(_required_url("DATABASE_URL"))}
DATABASES["default"]["ENGINE"] = "django_tenants.postgresql_backend"
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if env.bool("DATABASE_POOL", default=False):
    # psycopg's pool, per process: what an ASGI server needs, since each request runs in a thread of its own.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
        "timeout": 10,
    }
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = _required_url("REDIS_URL")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # Every cache key carries the tenant's schema, so no tenant can read another's entries.
        "KEY_FUNCTION": "django_tenants.cache.make_key",
        "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
    }
}
# Sessions live in each tenant's own schema: a session cookie from one tenant means nothing on another.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Accounts, passwords and login throttling ---------------------------------------------------

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
PASSWORD_RESET_TIMEOUT = env.int("INVITATION_TTL_SECONDS", default=7 * 24 * 3600)

AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.int("AXES_COOLOFF_MINUTES", default=15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_USERNAME_FORM_FIELD = "username"  # the login form's field name, though users log in by email
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_IPWARE_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# Second factor (TOTP) for the roles that open the admin. A wrong code doubles the wait before the next
# try on that device (factor, 2x factor, 4x factor ... seconds), so guessing six digits is hopeless.
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="AI PaaS Portal")
OTP_TOTP_THROTTLE_FACTOR = env.int("OTP_TOTP_THROTTLE_FACTOR", default=1)
OTP_STATIC_THROTTLE_FACTOR = env.int("OTP_STATIC_THROTTLE_FACTOR", default=1)
OTP_ADMIN_HIDE_SENSITIVE_DATA = True  # the admin never shows a TOTP secret or a recovery code
RECOVERY_CODE_COUNT = 10

# --- API keys and the REST API ----------------------------------------------------------------


def _api_key_pepper() -> str:
    """The server-side secret mixed into every key hash; a database leak alone cannot verify keys."""
    pepper = env.str("API_KEY_PEPPER", default="")
    if not pepper and not DEBUG:
        raise ImproperlyConfigured("API_KEY_PEPPER must be set when DEBUG=0 (32+ random characters).")
    if pepper and len(pepper) < 32 and not DEBUG:
        raise ImproperlyConfigured("API_KEY_PEPPER is too short: use at least 32 random characters.")
    return pepper or f"dev-pepper:{SECRET_KEY}"


API_KEY_PEPPER = _api_key_pepper()
API_KEY_CACHE_SECONDS = env.int("API_KEY_CACHE_SECONDS", default=300)
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.apikeys.authentication.ApiKeyAuthentication",
        "apps.api.authentication.PortalSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "apps.apikeys.permissions.HasScopes",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["apps.apikeys.throttling.RateLimitThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.api.parsers.BoundedJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "apps.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "apps.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AI PaaS Portal API",
    "DESCRIPTION": "Keys, models, inference and compliance for one tenant. Authenticate with "
    "`Authorization: Bearer <key>` or `X-API-Key: <key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several resources have a `status` of their own; each gets its own, stable enum name in the schema.
    "ENUM_NAME_OVERRIDES": {
        "ModelVersionStatusEnum": "apps.registry.models.ModelVersion.Status",
        "ComplianceReportStatusEnum": "apps.compliance.models.ComplianceReport.Status",
        "JobStatusEnum": ["queued", "running", "succeeded", "failed"],
    },
}

# --- Model registry (MLflow) ------------------------------------------------------------------


def _mlflow_tracking_uri() -> str:
    """MLflow's own database on the portal's PostgreSQL server (SQLAlchemy URL, psycopg 3 driver)."""
    from urllib.parse import urlsplit, urlunsplit

    url = env.str("MLFLOW_DATABASE_URL", default="")
    if not url:
        parts = urlsplit(_required_url("DATABASE_URL"))
        url = urlunsplit(parts._replace(path="/" + parts.path.lstrip("/") + "_mlflow"))
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        parts = parts._replace(scheme="postgresql+psycopg")
    return urlunsplit(parts)


MLFLOW_TRACKING_URI = _mlflow_tracking_uri()
MLFLOW_ARTIFACT_ROOT = env.str("MLFLOW_ARTIFACT_ROOT", default=str(VAR_DIR / "mlartifacts"))
MODEL_UPLOAD_MAX_BYTES = env.int("MODEL_UPLOAD_MAX_BYTES", default=200 * 1024 * 1024)
SERVING_SECRET_KEY = env.str("SERVING_SECRET_KEY", default="")

# --- Web -----------------------------------------------------------------------------------------

# Threads per ASGI web process for the synchronous part of requests (`config.asgi_handler`): a predict waits
# on its worker's reply in one of them, so this bounds the requests a process serves at once (streams excepted).
ASGI_THREADS = env.int("ASGI_THREADS", default=32)

# --- Compliance -----------------------------------------------------------------------------------


def _payload_encryption_keys() -> list[str]:
    """Checked at start-up: a short key would seal every kept payload under something guessable."""
    keys = env.list("PAYLOAD_ENCRYPTION_KEYS", default=[])
    if any(len(key) < 32 for key in keys):
        raise ImproperlyConfigured("PAYLOAD_ENCRYPTION_KEYS: each key needs at least 32 random characters.")
    return keys


# Keys that seal the payloads tenants choose to keep (the first encrypts, every one decrypts). Empty: no
# tenant can turn payload retention on.
PAYLOAD_ENCRYPTION_KEYS = _payload_encryption_keys()
# Rows deleted per transaction by the retention purge, so a purge never holds long locks.
RETENTION_PURGE_BATCH = env.int("RETENTION_PURGE_BATCH", default=5000)

# --- Inference ------------------------------------------------------------------------------------

# Consecutive failures (connection errors, timeouts, 5xx) that open a replica's circuit, and for how long.
CIRCUIT_FAILURE_THRESHOLD = env.int("CIRCUIT_FAILURE_THRESHOLD", default=3)
CIRCUIT_OPEN_SECONDS = env.int("CIRCUIT_OPEN_SECONDS", default=15)
# How long past a deployment's timeout the web process waits for a worker before declaring it lost.
INFERENCE_WORKER_GRACE_SECONDS = env.float("INFERENCE_WORKER_GRACE_SECONDS", default=2.0)
# How long an async predict job (its status and result at /api/v1/jobs/{id}) stays readable: its Redis TTL.
INFERENCE_JOB_RESULT_SECONDS = env.int("INFERENCE_JOB_RESULT_SECONDS", default=86400)

# --- Security (strict by default whenever DEBUG is off) ----------------------------------------

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- Static files, mail, i18n -------------------------------------------------------------------

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="AI PaaS Portal <noreply@localhost>")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Celery ---------------------------------------------------------------------------------------

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
if CELERY_BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
    CELERY_BROKER_TRANSPORT = "config.celery_transport:Transport"  # kombu's, keeping one client per channel
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=3600)
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_DEFAULT_QUEUE", default="default")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery would close each task's database connections after every task unless this is set; `config.celery` closes
# them the way Django does after a request instead (past `CONN_MAX_AGE`, or unusable), so tasks reuse them.
CELERY_DB_REUSE_MAX = 1_000_000
# Workers look a task's tenant up once a minute per process, not once per task (a database query on the hot path).
CELERY_TASK_TENANT_CACHE_SECONDS = 60
CELERY_BEAT_SCHEDULE_FILENAME = str(env.path("CELERY_BEAT_SCHEDULE", default=BASE_DIR / "var" / "celerybeat-schedule"))
CELERY_BEAT_SCHEDULE = {
    "clear-expired-sessions": {
        "task": "apps.tenants.tasks.clear_expired_sessions_everywhere",
        "schedule": 3600.0,
    },
    "purge-past-retention": {
        "task": "apps.compliance.tasks.purge_past_retention_everywhere",
        "schedule": 3600.0,
    },
    "verify-inference-chains": {
        "task": "apps.compliance.tasks.verify_chains_everywhere",
        "schedule": 24 * 3600.0,
    },
    "flush-access-events": {
        "task": "apps.compliance.tasks.flush_access_events_everywhere",
        "schedule": 10.0,
    },
    "probe-model-servers": {
        "task": "apps.serving.tasks.probe_servers_everywhere",
        "schedule": 30.0,
    },
    "record-keys-last-used": {
        "task": "apps.apikeys.tasks.record_keys_last_used_everywhere",
        "schedule": 60.0,
    },
    "sweep-inference-jobs": {
        "task": "apps.inference.tasks.sweep_jobs_everywhere",
        "schedule": 10.0,
    },
}

# --- Monitoring ---------------------------------------------------------------------------------

# Where gunicorn's workers keep their metric files. config/gunicorn.conf.py sets it for its workers (a folder
# of its own under $VAR_DIR/prometheus unless given); where it is unset (tests, commands, Celery) the
# metrics of a process live in its memory.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
# /metrics (public host) answers a bearer token (empty: no token accepted) or a client inside these networks.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")


def _metrics_networks() -> list[str]:
    """Checked at start-up: a typo here must not surface as an error at the first scrape."""
    import ipaddress

    cidrs = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as error:
            raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {error}") from None
    return cidrs


METRICS_ALLOWED_NETWORKS = _metrics_networks()
# Scrapers often reach each web instance directly over plain HTTP; a redirect to HTTPS would only fail them.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]

# --- Logging ----------------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
