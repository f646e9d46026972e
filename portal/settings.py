"""Settings for the LLM Efficiency Challenge portal. All values come from portal.env."""

from datetime import timedelta

import dj_database_url
from kombu import Queue

from portal.env import (
    BASE_DIR,
    VAR_DIR,
    env_bool,
    env_int,
    env_list,
    env_required,
    env_str,
)

DEBUG = env_bool("DEBUG", default=False)
SECRET_KEY = env_str("SECRET_KEY") or (
    "demo-insecure-secret-key-do-not-use-in-production" if DEBUG else env_required("SECRET_KEY")
)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "rest_framework",
    "drf_spectacular",
    "django_filters",
    "portal",
    "evaluation",
    "leaderboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "portal.middleware.RefuseNulCharactersMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
SITE_ID = 1

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
                "portal.context_processors.challenge",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The demo's web server and workers share one SQLite file: wait on locks instead of failing.
    # A deferred transaction that has read cannot wait for another writer (SQLite fails it at once
    # with "database is locked"), so transactions take the write lock when they begin; WAL lets
    # readers go on meanwhile.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGOUT_ON_GET = False
ACCOUNT_UNIQUE_EMAIL = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = env_str("STATIC_ROOT", str(VAR_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Nothing uploaded is ever served from a public URL: views check permissions and stream files.
MEDIA_ROOT = env_str("MEDIA_ROOT", str(VAR_DIR / "media"))
MEDIA_URL = None

AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
if AWS_STORAGE_BUCKET_NAME:
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env_str("AWS_S3_ENDPOINT_URL"),
            "region_name": env_str("AWS_S3_REGION_NAME"),
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "base_url": None},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "LLM Efficiency Challenge <noreply@llm-efficiency-challenge.org>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Security: on whenever DEBUG is off, so `check --deploy` is clean with production settings.
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Celery. Default: kombu's filesystem transport, so the demo needs no Redis.
REDIS_URL = env_str("REDIS_URL")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem"):
    for sub in ("out", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "out"),
        "data_folder_out": str(BROKER_DIR / "out"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        # Otherwise kombu writes its broadcast exchanges into ./control of whatever the working directory is.
        "control_folder": str(BROKER_DIR / "control"),
    }
else:
    # Above the longest evaluation, or Redis redelivers a job that is still running.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 16 * 3600)}
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_QUEUES = [Queue("cpu")]
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE: dict = {}
CELERY_TIMEZONE = "UTC"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Efficiency Challenge API",
    "DESCRIPTION": "Teams, submissions, evaluations and leaderboards of the challenge.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Challenge rules that are deployment settings rather than challenge data.
STUDENT_EVIDENCE_MAX_BYTES = env_int("STUDENT_EVIDENCE_MAX_BYTES", 5 * 1024 * 1024)
INVITATION_LINK_TTL = timedelta(days=env_int("INVITATION_LINK_TTL_DAYS", 7))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Evaluation pipeline (issue 5). Suites a track runs, in role order: "open=NAME,hidden=NAME" or "NAME,NAME".
EVALUATION_SUITES = env_list("EVALUATION_SUITES", ["offline-open", "offline-hidden"])
EVALUATION_HEARTBEAT_SECONDS = env_int("EVALUATION_HEARTBEAT_SECONDS", 15)
# A running job whose heartbeat is older than this is presumed dead and reaped.
EVALUATION_STALE_AFTER_SECONDS = env_int("EVALUATION_STALE_AFTER_SECONDS", 300)
EVALUATION_REAP_BATCH = env_int("EVALUATION_REAP_BATCH", 50)
# A submission that kills its worker this many times fails instead of coming back again.
EVALUATION_MAX_WORKER_LOSSES = env_int("EVALUATION_MAX_WORKER_LOSSES", 2)
EVALUATION_MAX_INFRA_ATTEMPTS = env_int("EVALUATION_MAX_INFRA_ATTEMPTS", 3)
EVALUATION_RETRY_BACKOFF_SECONDS = env_int("EVALUATION_RETRY_BACKOFF_SECONDS", 60)
# Where workers unpack HELM's output before archiving it into storage.
EVALUATION_WORK_DIR = env_str("EVALUATION_WORK_DIR", str(VAR_DIR / "evaluation-work"))
CELERY_BEAT_SCHEDULE["evaluation-reap-stale-jobs"] = {
    "task": "evaluation.tasks.evaluation_reap_stale_jobs",
    "schedule": env_int("EVALUATION_REAP_EVERY_SECONDS", 60),
    "options": {"queue": "cpu"},
}
EVALUATION_HELM_THREADS = env_int("EVALUATION_HELM_THREADS", 128)
EVALUATION_HEALTH_TIMEOUT_SECONDS = env_int("EVALUATION_HEALTH_TIMEOUT_SECONDS", 300)
# Keep a model server and a helm-run with their imports done waiting for the next evaluation
# (saves 10-15 s of torch/transformers imports per evaluation on a GPU box; see docs/benchmarks.md).
EVALUATION_STANDBY = env_bool("EVALUATION_STANDBY", True)
# helm-run processes per evaluation, run entries split between them (HELM's own work is single-core);
# 0: one per four CPU cores, at most four.
EVALUATION_HELM_PROCESSES = env_int("EVALUATION_HELM_PROCESSES", 0)
# Submissions and resumable uploads (evaluation/).
UPLOAD_EXPIRY_HOURS = env_int("UPLOAD_EXPIRY_HOURS", 24)
UPLOAD_DEADLINE_GRACE_HOURS = env_int("UPLOAD_DEADLINE_GRACE_HOURS", 3)
UPLOAD_LEASE_SECONDS = env_int("UPLOAD_LEASE_SECONDS", 120)
SUBMISSION_FILES_ROOT = env_str("SUBMISSION_FILES_ROOT")  # default: MEDIA_ROOT/submissions
SUBMISSION_MAX_FILES = env_int("SUBMISSION_MAX_FILES", 1000)
CELERY_BEAT_SCHEDULE["evaluation-uploads-expire"] = {
    "task": "evaluation.uploads_expire",
    "schedule": timedelta(minutes=env_int("UPLOAD_EXPIRE_EVERY_MINUTES", 15)),
    "options": {"queue": "cpu"},
}

# The API (portal/api/): sessions and personal tokens, one error format, pagination, throttling per scope.
REST_FRAMEWORK.update(
    {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "portal.api.authentication.ApiTokenAuthentication",
            "rest_framework.authentication.SessionAuthentication",
        ],
        "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
        "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.ApiPagination",
        "EXCEPTION_HANDLER": "portal.api.errors.api_exception_handler",
        "DEFAULT_THROTTLE_CLASSES": ["portal.api.throttling.AnonThrottle", "portal.api.throttling.UserThrottle"],
        "DEFAULT_THROTTLE_RATES": {
            "anon": env_str("API_THROTTLE_ANON", "120/min"),
            "user": env_str("API_THROTTLE_USER", "1200/min"),
            "submission": env_str("API_THROTTLE_SUBMISSION", "30/hour"),
        },
    }
)
SPECTACULAR_SETTINGS.update(
    {
        "SCHEMA_PATH_PREFIX": "/api/v1",
        "COMPONENT_SPLIT_REQUEST": True,
        "POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums",
            "portal.api.schema.add_error_responses",
        ],
        # Vendored in static/vendor/ (no CDN, no sidecar package).
        "SWAGGER_UI_DIST": STATIC_URL + "vendor/swagger-ui",
        "SWAGGER_UI_FAVICON_HREF": STATIC_URL + "vendor/swagger-ui/favicon-32x32.png",
        "REDOC_DIST": STATIC_URL + "vendor/redoc",
        "ENUM_NAME_OVERRIDES": {
            "SubmissionStatusEnum": "evaluation.models.Submission.Status",
            "InvitationStatusEnum": "portal.models.Invitation.Status",
            "StudentStatusEnum": "portal.models.Profile.StudentStatus",
        },
    }
)

# Leaderboard (issue 6): plotly.js is served from the installed `plotly` package, not committed.
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "leaderboard.staticfinders.PlotlyFinder",
]
