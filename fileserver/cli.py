"""Command line: parse options, build the Config, run the server (uvicorn's main.py in spirit)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import tomllib
from pathlib import Path

import click

from fileserver import __version__
from fileserver.config import KERNEL_MAX_RESPONSE, Config, ConfigError


def _setup_logging(verbose: bool) -> None:
    """One line per event on stderr (journald adds its own timestamps under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # -v is about our own decisions (cache events, verifier logs), not every library's chatter.
    logging.getLogger("fileserver").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)


_DEFAULTS = Config()  # every option's default is the Config field's: one place for each


def _envvar(name: str) -> str:
    return f"FILESERVER_{name}"


def _read_config_file(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """--config: a TOML file of option names and values, read as defaults (the command line and
    FILESERVER_* variables override it). Read again on SIGHUP."""
    if value is None:
        return None
    try:
        with open(value, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise click.BadParameter(f"cannot read {value}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise click.BadParameter(f"{value} is not valid TOML: {e}") from None
    defaults = {key.replace("-", "_"): v for key, v in data.items()}
    if "interface" in defaults:  # the option's name on the command line, its parameter's name here
        v = defaults.pop("interface")
        defaults["interfaces"] = [v] if isinstance(v, str) else v
    rules = defaults.pop("cache_control_rules", None)
    if isinstance(rules, dict):  # the table form: [cache-control-rules] "PATTERN" = "VALUE"
        if any("=" in k for k in rules):
            raise click.BadParameter(f"{value}: a cache-control-rules pattern cannot contain '='")
        rules = [f"{k}={v}" for k, v in rules.items()]
    if rules is not None:
        defaults["cache_control_rules"] = rules
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(defaults) - known - {"config"})
    if unknown:
        raise click.BadParameter(f"{value}: unknown setting(s) {', '.join(unknown)} (see fileserver --help)")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


@click.group(invoke_without_command=True, context_settings={"show_default": True})
@click.option("-c", "--config", type=click.Path(path_type=Path, dir_okay=False), envvar=_envvar("CONFIG"),
              is_eager=True, expose_value=False, callback=_read_config_file,
              help="TOML file of settings (keys are the long option names); read again on SIGHUP.")
@click.option("-d", "--root", type=click.Path(path_type=Path), default=_DEFAULTS.root, envvar=_envvar("ROOT"), help="Document root.")
@click.option("-p", "--port", type=int, default=_DEFAULTS.port, envvar=_envvar("PORT"), help="HTTP port.")
@click.option("--bind", default=_DEFAULTS.bind, envvar=_envvar("BIND"), help="Address(es) to listen on, comma-separated: 0.0.0.0,:: for IPv4 and IPv6.")
@click.option("-i", "--interface", "interfaces", multiple=True, default=_DEFAULTS.interfaces, envvar=_envvar("INTERFACE"),
              help="Interface for the kernel path (repeatable; in the environment, space-separated).")
@click.option("-n", "--no-kernel-cache", is_flag=True, envvar=_envvar("NO_KERNEL_CACHE"), help="Serve from userspace only.")
@click.option("--metrics-port", type=int, default=_DEFAULTS.metrics_port, envvar=_envvar("METRICS_PORT"), help="Prometheus /metrics port (0 = off).")
@click.option("--metrics-bind", default=_DEFAULTS.metrics_bind, envvar=_envvar("METRICS_BIND"), help="Address for the metrics endpoint.")
@click.option("--hot-after", type=int, default=_DEFAULTS.hot_after, envvar=_envvar("HOT_AFTER"),
              help="Push a file to the kernel after N userspace hits (0 = every eligible file at start).")
@click.option("--max-kernel-file-size", type=int, default=_DEFAULTS.max_kernel_file_size, envvar=_envvar("MAX_KERNEL_FILE_SIZE"),
              help=f"Largest file the kernel serves, in bytes (its response must also fit the largest cache entry, {KERNEL_MAX_RESPONSE} bytes).")
@click.option("--kernel-cache-entries", type=int, default=_DEFAULTS.kernel_cache_entries, envvar=_envvar("KERNEL_CACHE_ENTRIES"), help="Most files held in the kernel cache.")
@click.option("--kernel-connections", type=int, default=_DEFAULTS.kernel_connections, envvar=_envvar("KERNEL_CONNECTIONS"),
              help="Size of the kernel's connection table; connections beyond it are served by userspace.")
@click.option("--keepalive-timeout", type=float, default=_DEFAULTS.keepalive_timeout, envvar=_envvar("KEEPALIVE_TIMEOUT"),
              help="Close idle keep-alive connections after this many seconds.")
@click.option("--header-timeout", type=float, default=_DEFAULTS.header_timeout, envvar=_envvar("HEADER_TIMEOUT"),
              help="Close a connection whose request head is not complete after this many seconds (408).")
@click.option("--max-connections", type=int, default=_DEFAULTS.max_connections, envvar=_envvar("MAX_CONNECTIONS"),
              help="Most open connections; more are answered 503 and closed.")
@click.option("--backlog", type=int, default=_DEFAULTS.backlog, envvar=_envvar("BACKLOG"),
              help="Listen backlog: connections the kernel queues until the server accepts them (capped by "
                   "net.core.somaxconn).")
@click.option("--socketless-close/--no-socketless-close", default=_DEFAULTS.socketless_close,
              envvar=_envvar("SOCKETLESS_CLOSE"),
              help="Answer connections whose first request is a cached hit that ends them (HTTP/1.0, "
                   "Connection: close) without any socket; sets net.ipv4.tcp_syncookies=2 in the "
                   "server's network namespace while running (README: what that costs).")
@click.option("-w", "--workers", type=int, default=_DEFAULTS.workers, envvar=_envvar("WORKERS"),
              help="Userspace processes accepting on the port (SO_REUSEPORT); 0: one per CPU the server may "
                   "run on; 1: a single process, no supervisor.")
@click.option("--max-url-length", type=int, default=_DEFAULTS.max_url_length, envvar=_envvar("MAX_URL_LENGTH"),
              help="Longest request line (400 beyond).")
@click.option("--max-header-size", type=int, default=_DEFAULTS.max_header_size, envvar=_envvar("MAX_HEADER_SIZE"),
              help="Longest header field (400 beyond).")
@click.option("--max-headers", type=int, default=_DEFAULTS.max_headers, envvar=_envvar("MAX_HEADERS"), help="Most header fields.")
@click.option("--autoindex", is_flag=True, envvar=_envvar("AUTOINDEX"), help="List directories that have no index.html.")
@click.option("--cache-control", default=_DEFAULTS.cache_control, envvar=_envvar("CACHE_CONTROL"),
              help="Cache-Control of every file's 200, 206 and 304 answers, e.g. 'no-cache' (default: none).")
@click.option("--cache-control-rule", "cache_control_rules", multiple=True, default=_DEFAULTS.cache_control_rules,
              help="PATTERN=VALUE, repeatable, first match wins over --cache-control: a pattern with '/' "
                   "matches the file's path from the root ('/assets/*'), one without its name ('*.html'). "
                   "In the config file: a [cache-control-rules] table.")
@click.option("--precompressed/--no-precompressed", default=_DEFAULTS.precompressed, envvar=_envvar("PRECOMPRESSED"),
              help="Send a file's precompressed sibling (x.css.br, .zst, .gz) to a client whose Accept-Encoding allows it.")
@click.option("--compress", is_flag=True, envvar=_envvar("COMPRESS"),
              help="Also compress text types that have no sibling (br and zstd when their packages are installed, gzip), once per version of the file.")
@click.option("--access-log", is_flag=True, envvar=_envvar("ACCESS_LOG"), help="Log every userspace request (combined format).")
@click.option("--drop-all-capabilities", is_flag=True, envvar=_envvar("DROP_ALL_CAPABILITIES"),
              help="After attaching, give up the permitted capabilities too: SIGHUP cannot then swap the BPF "
                   "programs or change interfaces, and `fileserver detach` (ExecStopPost) removes the filters.")
@click.option("-v", "--verbose", is_flag=True, envvar=_envvar("VERBOSE"), help="Debug logging, including the BPF verifier log on failure.")
@click.version_option(__version__, prog_name="fileserver")
@click.pass_context
def main(ctx: click.Context, **opts: object) -> None:
    """Serve a directory over HTTP; small hot files are answered by the kernel (eBPF at TC ingress)."""
    ctx.obj = opts
    if ctx.invoked_subcommand is not None:
        return
    _setup_logging(bool(opts["verbose"]))
    try:
        config = config_from_options(opts)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None

    from fileserver.fdlimit import raise_open_files
    from fileserver.listen import StartupError
    from fileserver.server import serve

    raise_open_files(config.max_connections)

    args = sys.argv[1:]
    try:
        asyncio.run(serve(config, reload=lambda: _reread(args)))
    except StartupError as e:
        raise click.ClickException(str(e)) from None


def config_from_options(opts: dict[str, object]) -> Config:
    """The validated Config for the main command's parameter values (ConfigError if they are wrong)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    values = {k: v for k, v in opts.items() if k in fields}
    values["interfaces"] = tuple(opts["interfaces"])  # type: ignore[call-overload]
    values["cache_control_rules"] = tuple(opts["cache_control_rules"])  # type: ignore[call-overload]
    values["kernel_cache"] = not opts["no_kernel_cache"]
    return Config(**values).validated()  # type: ignore[arg-type]


def _reread(args: list[str]) -> Config:
    """The configuration as a fresh start with the same arguments would see it now (SIGHUP)."""
    try:
        with main.make_context("fileserver", list(args), resilient_parsing=False) as ctx:
            return config_from_options(ctx.params)
    except click.ClickException as e:
        raise ConfigError(e.format_message()) from None


@main.command()
@click.pass_context
def detach(ctx: click.Context) -> None:
    """Remove this port's TC filters from the interfaces (after a crash; used by the systemd unit).

    Takes the same --port and --interface as the server (given before `detach`, or from the
    environment). Filters of other ports and other programs are left alone.
    """
    from fileserver.tc import TcError, detach_port

    opts = ctx.obj
    total = 0
    for ifname in opts["interfaces"]:
        try:
            total += detach_port(ifname, opts["port"])
        except TcError as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"removed {total} filter(s) for port {opts['port']}")


@main.command()
@click.option("--url", default="http://127.0.0.1:9180", show_default=True, help="The server's metrics endpoint.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable snapshot and exit.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes.")
def stats(url: str, once: bool, as_json: bool, interval: float) -> None:
    """Live view of a running server: requests/s by path, kernel share, cache, hot files, passes.

    Reads the server's /stats.json on the metrics port, so it needs no privileges.
    """
    from fileserver.statsview import run

    run(url, once, as_json, interval)


@main.command()
def doctor() -> None:
    """Check that the kernel path can run here (kernel, BTF, headers, bcc, capabilities, clsact,
    and a real compile and load) and say what to fix."""
    from fileserver.doctor import report, run_checks

    text, ok = report(run_checks())
    click.echo(text)
    if not ok:
        raise SystemExit(1)
