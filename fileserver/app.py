"""The aiohttp application: one catch-all route to the static handler."""

from __future__ import annotations

from aiohttp import web

from fileserver.handlers import StaticHandler

# aiohttp's parser limits (llhttp): longer lines or header fields get a 400 before any handler runs.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190


def make_app(handler: StaticHandler) -> web.Application:
    app = web.Application(handler_args={"max_line_size": MAX_LINE_SIZE, "max_field_size": MAX_FIELD_SIZE})
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
