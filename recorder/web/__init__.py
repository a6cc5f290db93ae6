"""The device's web page: see it, hear it, fix it from a phone.

`server` runs it as a worker of the service (Waitress, its own threads, never on the capture
path); `routes` maps URLs to `views`, which read the shared components and ask the service
through its `request` entry point; `auth` guards the controls; `media` opens recording files
safely; `listing` is the recordings page's index; `metrics` speaks Prometheus. Pages are plain
HTML, CSS and JavaScript in ``static/`` (no build step, nothing from the internet).
"""
