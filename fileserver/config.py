"""The one frozen configuration object, built by the CLI and passed everywhere."""

from __future__ import annotations

import os
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from fileserver.abi import CLASS_DATA, NM_REGION
from fileserver.cache_control import CacheControl, CacheControlError

# Largest response a cache entry holds: the largest size class (32 KiB less the map element's
# overhead and the entry's header) less its 304 answer. The kernel sends it in segments of at
# most one skb (bpf_skb_change_tail stops at 16,064 bytes; DESIGN.md section 7) and the link's MTU.
KERNEL_MAX_RESPONSE = CLASS_DATA[-1] - NM_REGION


class ConfigError(ValueError):
    """A configuration problem, with a message that says what to do."""


@dataclass(frozen=True)
class ParserLimits:
    """Userspace's parser limits, which the BPF parser is compiled with (it must never accept more):
    the longest request line, the longest header line and the most header lines."""

    url_length: int = 8190
    header_size: int = 8190
    headers: int = 128

    def any_below(self, other: "ParserLimits") -> bool:
        """Whether any of these limits is lower than other's (a reload that shrinks one)."""
        return any(mine < theirs for mine, theirs in zip(astuple(self), astuple(other)))


@dataclass(frozen=True)
class Config:
    root: Path = Path("www")
    port: int = 8080
    bind: str = "0.0.0.0"
    interfaces: tuple[str, ...] = ("lo",)
    kernel_cache: bool = True
    metrics_port: int = 9180
    metrics_bind: str = "127.0.0.1"
    hot_after: int = 3
    max_kernel_file_size: int = 16 * 1024
    kernel_cache_entries: int = 1024
    kernel_connections: int = 65536
    memory_cache_bytes: int = 64 * 1024 * 1024
    max_memory_file_size: int = 1024 * 1024
    keepalive_timeout: float = 75.0
    header_timeout: float = 20.0
    max_connections: int = 10_000
    # Accept queue of the listening socket (listen(2)), nginx's default. Connections the kernel path
    # answers and the client closes at once need no userspace to go on, so they queue up faster
    # than Python accepts them: 128 (aiohttp's default) filled in tens of milliseconds at a few
    # thousand connections per second, and the kernel then drops SYNs (a 1 s retransmission).
    backlog: int = 511
    # Connections whose first request is a cached hit that ends the connection (HTTP/1.0, ab without
    # -k, Connection: close) answered without any socket (bpf/nosock.h); sets the namespace's
    # net.ipv4.tcp_syncookies to 2 while running (syncookies.py says what that costs).
    socketless_close: bool = False
    # Userspace processes (workers.py); 0: one per CPU this process may run on; 1: no supervisor,
    # one process as before.
    workers: int = 0
    max_url_length: int = 8190
    max_header_size: int = 8190
    max_headers: int = 128
    autoindex: bool = False
    cache_control: str = ""                      # the Cache-Control of every file's answers ("": none)
    cache_control_rules: tuple[str, ...] = ()    # "PATTERN=VALUE", first match wins (cache_control.py)
    precompressed: bool = True                   # serve x.br/.zst/.gz siblings by Accept-Encoding (encoding.py)
    compress: bool = False                       # ... and compress text types without them, once per version
    access_log: bool = False
    drop_all_capabilities: bool = False
    shutdown_timeout: float = 10.0
    verbose: bool = False

    @property
    def parser_limits(self) -> ParserLimits:
        return ParserLimits(self.max_url_length, self.max_header_size, self.max_headers)

    @property
    def cache_control_policy(self) -> CacheControl:
        return CacheControl.parse(self.cache_control, self.cache_control_rules)

    @property
    def bind_addresses(self) -> tuple[str, ...]:
        """--bind is one address or several, comma-separated ("0.0.0.0,::": IPv4 and IPv6)."""
        return tuple(a.strip() for a in self.bind.split(",") if a.strip())

    def validated(self) -> "Config":
        """Check the values and return a copy whose root is absolute and resolved."""
        root = Path(self.root)
        if not root.exists():
            raise ConfigError(f"document root {root} does not exist: create it or pass --root DIR")
        if not root.is_dir():
            raise ConfigError(f"document root {root} is not a directory: pass --root DIR")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError(f"document root {root} is not readable by this user")
        for name, port in (("--port", self.port), ("--metrics-port", self.metrics_port)):
            if not 0 <= port <= 65535 or (name == "--port" and port == 0):
                raise ConfigError(f"{name} {port} is not a valid TCP port (1-65535)")
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError("--metrics-port must differ from --port (or be 0 to switch metrics off)")
        if self.hot_after < 0:
            raise ConfigError("--hot-after must be 0 (push every eligible file at start) or more")
        if not 0 < self.max_kernel_file_size <= KERNEL_MAX_RESPONSE:
            raise ConfigError(
                f"--max-kernel-file-size must be between 1 and {KERNEL_MAX_RESPONSE} bytes "
                "(the largest kernel cache entry holds at most that much)"
            )
        if self.keepalive_timeout <= 0:
            raise ConfigError("--keepalive-timeout must be more than 0 seconds")
        if self.header_timeout <= 0:
            raise ConfigError("--header-timeout must be more than 0 seconds")
        if self.max_connections < 1:
            raise ConfigError("--max-connections must be at least 1")
        if not 1 <= self.backlog <= 65535:
            raise ConfigError("--backlog must be between 1 and 65535 (the kernel caps it at net.core.somaxconn)")
        for name, value in (("--max-url-length", self.max_url_length), ("--max-header-size", self.max_header_size),
                            ("--max-headers", self.max_headers)):
            if not 1 <= value <= 1 << 20:
                raise ConfigError(f"{name} must be between 1 and {1 << 20}")
        if not 0 <= self.workers <= 1024:
            raise ConfigError("--workers must be between 1 and 1024 (0: one per CPU)")
        if not 1 <= self.kernel_connections <= 1 << 22:
            raise ConfigError("--kernel-connections must be between 1 and 4194304")
        try:
            self.cache_control_policy
        except CacheControlError as e:
            raise ConfigError(str(e)) from None
        if not self.interfaces and self.kernel_cache:
            raise ConfigError("the kernel path needs at least one --interface (or pass --no-kernel-cache)")
        if self.kernel_cache:
            for ifname in self.interfaces:
                if not Path("/sys/class/net", ifname).exists():
                    raise ConfigError(
                        f"no network interface named {ifname!r} (see `ip link`): fix --interface, or pass --no-kernel-cache"
                    )
        workers = self.workers or len(os.sched_getaffinity(0))
        return replace(self, root=root.resolve(strict=True), workers=workers)
