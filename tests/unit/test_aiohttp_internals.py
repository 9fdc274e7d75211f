"""fileserver/app.py relies on internals of aiohttp's request handler and server: each must exist
in the installed aiohttp, and none of app.py's own private names may shadow one of aiohttp's."""

from __future__ import annotations

import ast
import asyncio

from aiohttp import web

from fileserver import app
from tests.support import REPO


def members(cls: type) -> set[str]:
    """Every attribute and method name of cls (the slots of every class in its MRO included)."""
    names = set(dir(cls))
    for base in cls.__mro__:
        slots = getattr(base, "__slots__", ())
        names |= {slots} if isinstance(slots, str) else set(slots)
    return names


def own_names(class_name: str) -> tuple[set[str], set[str]]:
    """(private names app.py's class assigns or defines, private names it only reads) for self.X."""
    tree = ast.parse((REPO / "fileserver" / "app.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    defined = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
    used = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.attr)
    private = {n for n in defined | used if n.startswith("_") and not n.startswith("__")}
    return private & defined, private & used - defined


def test_request_handler_internals_exist() -> None:
    have = members(web.RequestHandler)
    missing = [m for m in app.AIOHTTP_HANDLER_INTERNALS if m not in have]
    assert not missing, f"aiohttp's RequestHandler lacks {missing}: app._RequestHandler needs them (check the aiohttp pin)"
    defined, read = own_names("_RequestHandler")
    shadowed = defined & have
    unlisted = sorted((read | shadowed) - set(app.AIOHTTP_HANDLER_INTERNALS))
    assert not unlisted, f"app._RequestHandler uses or shadows aiohttp's {unlisted}: list them in AIOHTTP_HANDLER_INTERNALS or rename"


def test_server_internals_exist() -> None:
    async def build() -> web.Server:
        return web.Server(lambda request: web.Response())  # type: ignore[arg-type,return-value]

    server = asyncio.run(build())
    missing = [m for m in app.AIOHTTP_SERVER_INTERNALS if not hasattr(server, m)]
    assert not missing, f"aiohttp's web.Server lacks {missing}: app.HttpServer needs them (check the aiohttp pin)"
    defined, read = own_names("HttpServer")
    shadowed = defined & (members(web.Server) | set(vars(server)))
    unlisted = sorted((read | shadowed) - set(app.AIOHTTP_SERVER_INTERNALS))
    assert not unlisted, f"app.HttpServer uses or shadows aiohttp's {unlisted}: list them in AIOHTTP_SERVER_INTERNALS or rename"
