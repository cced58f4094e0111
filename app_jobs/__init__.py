"""The example app: its jobs live in this package and its entry point is `python -m app_jobs`."""
