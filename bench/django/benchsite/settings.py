"""Settings: the demo project's, plus WhiteNoise's middleware and the bench URLs."""

from demo.settings import *  # noqa: F403

MIDDLEWARE = list(MIDDLEWARE)  # noqa: F405
# WhiteNoise's documented place: directly after SecurityMiddleware, above everything else.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "whitenoise.middleware.WhiteNoiseMiddleware",
)
ROOT_URLCONF = "benchsite.urls"
WSGI_APPLICATION = "benchsite.wsgi.application"
# Nothing is logged per request (gunicorn runs without an access log, nginx with access_log off).
LOGGING_CONFIG = None
