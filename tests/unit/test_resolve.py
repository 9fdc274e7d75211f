import os
from pathlib import Path

import pytest

from fileserver.resolve import Outcome, Resolver, decode_path, is_canonical, origin_form


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "dir").mkdir(parents=True)
    (r / "dir" / "index.html").write_text("i")
    (r / "empty").mkdir()
    (r / "a.txt").write_text("a")
    (r / "sp ace.txt").write_text("s")
    (r / ".secret").write_text("s")
    (tmp_path / "outside.txt").write_text("o")
    os.symlink(tmp_path / "outside.txt", r / "escape.txt")
    os.symlink(r / "a.txt", r / "inside-link.txt")
    os.symlink(tmp_path, r / "escape-dir")
    return r


@pytest.mark.parametrize(
    "raw, outcome",
    [
        ("/a.txt", Outcome.FILE),
        ("/a.txt?x=1", Outcome.FILE),
        ("/sp%20ace.txt", Outcome.FILE),
        ("/dir/", Outcome.FILE),
        ("/dir", Outcome.REDIRECT),
        ("/empty/", Outcome.DIRECTORY),
        ("/missing", Outcome.NOT_FOUND),
        ("/../outside.txt", Outcome.FORBIDDEN),
        ("/%2e%2e/outside.txt", Outcome.FORBIDDEN),
        ("/dir/..%2f..%2foutside.txt", Outcome.FORBIDDEN),
        ("/%2E%2E%2Foutside.txt", Outcome.FORBIDDEN),
        ("/a.txt%00.html", Outcome.BAD_REQUEST),
        ("/%ff", Outcome.BAD_REQUEST),
        ("a.txt", Outcome.BAD_REQUEST),
        ("/escape.txt", Outcome.NOT_FOUND),
        ("/escape-dir/outside.txt", Outcome.NOT_FOUND),
        ("/inside-link.txt", Outcome.FILE),
        ("/.secret", Outcome.NOT_FOUND),
        ("//a.txt", Outcome.FILE),
    ],
)
def test_resolve(root: Path, raw: str, outcome: Outcome) -> None:
    assert Resolver(root).resolve(raw).outcome is outcome


def test_absolute_path_stays_in_root(root: Path, tmp_path: Path) -> None:
    # "//etc/passwd" must be read relative to the root, never as an absolute path.
    res = Resolver(root).resolve("/" + str(tmp_path / "outside.txt"))
    assert res.outcome is Outcome.NOT_FOUND


def test_resolved_paths_never_leave_root(root: Path) -> None:
    r = Resolver(root)
    for raw in ("/a.txt", "/dir/", "/inside-link.txt"):
        res = r.resolve(raw)
        assert res.path is not None and res.path.is_relative_to(r.root)


def test_redirect_location_is_local(root: Path) -> None:
    res = Resolver(root).resolve("//dir")
    assert res.outcome is Outcome.REDIRECT
    assert res.location == "/dir/"


def test_decode_once() -> None:
    assert decode_path("/a%2541") == "/a%41"  # %25 decodes to '%', and no second pass


@pytest.mark.parametrize(
    "path, canonical",
    [("/", True), ("/a.txt", True), ("/dir/", True), ("/a%20b", True), ("//a", False), ("/../a", False),
     ("/./a", False), ("/.hidden", False), ("/a b", False), ("/é", False), ("/%C3%A9", True), ("/%c3%a9", False),
     ("/%61", False), ("/a%2Fb", False), ("/%2e%2e/a", False), ("/%2Ehidden", False), ("/100%25", True),
     ("/100%", False), ("/it's+(1)", True), ("/it%27s", False), ("/a%3Fb", True), ("/a?b", False), ("/%FF", False)],
)
def test_is_canonical(path: str, canonical: bool) -> None:
    assert is_canonical(path) is canonical


@pytest.mark.parametrize(
    "target, path",
    [("/a?b", "/a?b"), ("http://x/a.txt", "/a.txt"), ("HTTP://x:8080/a?q", "/a?q"), ("http://x", "/"),
     ("http://x?q", "/?q"), ("https://x/%41", "/%41"), ("ftp://x/a", "ftp://x/a"), ("*", "*")],
)
def test_origin_form(target: str, path: str) -> None:
    assert origin_form(target) == path
