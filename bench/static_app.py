"""aiohttp's own web.static, as a benchmark contender (one process, no access log)."""

import sys

from aiohttp import web

root, port = sys.argv[1], int(sys.argv[2])
app = web.Application()
app.router.add_static("/", root)
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
