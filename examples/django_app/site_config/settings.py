"""A minimal Django project: one app (`shop`), no database of Django's own."""

SECRET_KEY = "example-only-not-a-secret"  # noqa: S105
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["shop"]
ROOT_URLCONF = "site_config.urls"
DATABASES: dict[str, object] = {}
USE_TZ = True
