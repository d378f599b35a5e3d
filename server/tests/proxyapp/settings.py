"""Settings of the proxy-test app. Paths come from the environment the test harness sets:

- PROXYAPP_MEDIA_ROOT: where /upload/ saves files (bypass serves it as its --media mount);
- PROXYAPP_PROTECTED_ROOT: the files /protected/<name> hands to bypass by X-Accel-Redirect
  (bypass serves it as its --internal mount, at SENDFILE_URL).
"""

import os
import tempfile

SECRET_KEY = "proxyapp-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = []
# CommonMiddleware, as in every real project: it gives non-streaming responses a
# Content-Length, so both framings (length and chunked) come from the app.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "proxyapp.urls"
WSGI_APPLICATION = "proxyapp.wsgi.application"
DATABASES = {}
USE_TZ = True
TIME_ZONE = "UTC"

MEDIA_ROOT = os.environ.get("PROXYAPP_MEDIA_ROOT") or tempfile.gettempdir()
MEDIA_URL = "/media/"

# Uploads above 1 MiB go to temporary files, never into memory; no limit on the request size
# here, because the limit under test is bypass's --max-body-size.
FILE_UPLOAD_MAX_MEMORY_SIZE = 1 << 20
DATA_UPLOAD_MAX_MEMORY_SIZE = None

# django-sendfile2 with its nginx backend: an empty response with X-Accel-Redirect.
SENDFILE_BACKEND = "django_sendfile.backends.nginx"
SENDFILE_ROOT = os.environ.get("PROXYAPP_PROTECTED_ROOT") or tempfile.gettempdir()
SENDFILE_URL = "/protected-files"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
