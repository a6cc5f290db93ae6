"""papad on a recorderpi (compose service "papad"): upstream papad's own settings, changed only
where a Pi without MinIO or PostgreSQL needs it.

- Database: SQLite on the data partition (one file, no database server to keep in RAM).
- Uploads: Django's FileSystemStorage under /srv/papad/media (RECORDER_DATA/papad/media on
  the host), served by nginx at /media/; no S3/MinIO.
- Static files: collected into /srv/papad-static (a volume nginx serves at /static/), with
  the vendored video.js the image fetched from the npm registry (no CDN).
- The secret key comes from the secrets volume the init service fills on first start.

Selected by DJANGO_SETTINGS_MODULE=recorderpi_settings, DJANGO_CONFIGURATION=Pi. upstream's
Common still reads its storage variables at import: compose gives them inert values.
"""

import os
from pathlib import Path

from papadapi.config.common import Common

# The container's paths; the variables exist for tests that run these settings outside it.
DATA = Path(os.environ.get("RECORDERPI_PAPAD_DATA", "/srv/papad"))
SECRETS = Path(os.environ.get("RECORDERPI_SECRETS", "/run/secrets"))


def _secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


class Pi(Common):
    DEBUG = False
    SECRET_KEY = _secret("papad-django-secret")
    ALLOWED_HOSTS = ["*"]  # noqa: RUF012 (Django settings are class attributes)
    # Browsers reach papad through nginx: their host comes in X-Forwarded-Host.
    USE_X_FORWARDED_HOST = True
    DATABASES = {  # noqa: RUF012
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA / "db.sqlite3"),
            # gunicorn workers and huey write the same file: wait for the lock, never fail.
            "OPTIONS": {"timeout": 30},
        }
    }
    STORAGES = {  # noqa: RUF012
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    MEDIA_ROOT = str(DATA / "media")
    MEDIA_URL = "/media/"
    STATIC_ROOT = os.environ.get("RECORDERPI_PAPAD_STATIC", "/srv/papad-static")
    STATICFILES_DIRS = [*Common.STATICFILES_DIRS, "/opt/papad-vendor"]  # noqa: RUF012
    # upstream keeps huey's queue beside its code: here on the data partition.
    HUEY = {**Common.HUEY, "filename": str(DATA / "huey-tasks.db")}  # noqa: RUF012
