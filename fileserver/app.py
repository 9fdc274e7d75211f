"""The aiohttp application: one catch-all route to the static handler."""

from __future__ import annotations

from aiohttp import web

from fileserver.handlers import StaticHandler

from fileserver.config import Config


def make_app(handler: StaticHandler, config: Config) -> web.Application:
    """Parser limits (llhttp) answer 400 before any handler runs: request line (URL), header field
    size and count; idle keep-alive connections are closed after keepalive_timeout."""
    app = web.Application(
        handler_args={
            "max_line_size": config.max_url_length,
            "max_field_size": config.max_header_size,
            "max_headers": config.max_headers,
            "keepalive_timeout": config.keepalive_timeout,
        }
    )
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
