"""The ASGI application for servers: ``granian --interface asgi service.asgi:app``."""

from .app import create_app

app = create_app()
