"""The HTTP inference service (FastAPI): ``create_app(settings, *, engine=None, pacs=None)``."""

from server.api.app import create_app

__all__ = ["create_app"]
