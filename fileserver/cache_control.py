"""Which Cache-Control header a file's responses carry (like nginx's `expires`/`add_header`).

`--cache-control VALUE` applies to every file; rules in the config file apply by pattern, the
first that matches winning:

    cache-control = "no-cache"
    [cache-control-rules]
    "/assets/*" = "public, max-age=31536000, immutable"
    "*.html" = "no-cache"

A pattern with a '/' is matched (fnmatch) against the file's path from the document root
("/assets/app.1f2e.js"), one without against its name ("*.html" at any depth). A rule is about
the file, not the URL, so "/" and "/index.html" carry the same header. The value is part of the
stored bytes of both paths: the 200, 206 and 304 answers (RFC 9110 section 15.4.5: a 304 carries
the Cache-Control the 200 would), not the error answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

# The kernel keeps a file's 304 in a fixed region (abi.NM_REGION bytes); with a longer value the
# file would still be served, but by userspace only.
MAX_VALUE_LEN = 96


class CacheControlError(ValueError):
    pass


def check_value(value: str, where: str) -> str:
    """A value as it will be sent: printable ASCII (a CR or LF would inject headers)."""
    value = value.strip()
    if not all(0x20 <= ord(c) < 0x7f for c in value):
        raise CacheControlError(f"{where}: {value!r} has a character a header value cannot hold")
    if len(value) > MAX_VALUE_LEN:
        raise CacheControlError(f"{where}: {value!r} is longer than {MAX_VALUE_LEN} characters")
    return value


def parse_rule(text: str) -> tuple[str, str]:
    """One rule as the command line spells it, `PATTERN=VALUE` (split at the first '=')."""
    pattern, sep, value = text.partition("=")
    pattern = pattern.strip()
    if not sep or not pattern:
        raise CacheControlError(f"cache-control rule {text!r}: write PATTERN=VALUE, e.g. '*.html=no-cache'")
    return pattern, check_value(value, f"cache-control rule {pattern!r}")


@dataclass(frozen=True)
class CacheControl:
    default: str = ""
    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, default: str, rules: tuple[str, ...]) -> "CacheControl":
        return cls(check_value(default, "--cache-control"), tuple(parse_rule(r) for r in rules))

    def for_file(self, rel_path: str) -> str:
        """The header value for the file at rel_path ("/dir/name", from the root); "" for none."""
        name = rel_path.rsplit("/", 1)[-1]
        for pattern, value in self.rules:
            if fnmatchcase(rel_path if "/" in pattern else name, pattern):
                return value
        return self.default
