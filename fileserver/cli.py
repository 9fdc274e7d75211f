"""Command line: parse options, build the Config, run the server."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from fileserver import __version__
from fileserver.config import KERNEL_MAX_RESPONSE, Config, ConfigError


@click.group(invoke_without_command=True, context_settings={"auto_envvar_prefix": "FILESERVER", "show_default": True})
@click.option("-d", "--root", type=click.Path(path_type=Path), default=Path("www"), help="Document root.")
@click.option("-p", "--port", type=int, default=8080, help="HTTP port.")
@click.option("--bind", default="0.0.0.0", help="Address to listen on.")
@click.option("-i", "--interface", "interfaces", multiple=True, default=("lo",), help="Interface for the kernel path (repeatable).")
@click.option("-n", "--no-kernel-cache", is_flag=True, help="Serve from userspace only.")
@click.option("--metrics-port", type=int, default=9180, help="Prometheus /metrics port (0 = off).")
@click.option("--metrics-bind", default="127.0.0.1", help="Address for the metrics endpoint.")
@click.option("--hot-after", type=int, default=3, help="Push a file to the kernel after N userspace hits (0 = all at start).")
@click.option("--max-kernel-file-size", type=int, default=15 * 1024, help=f"Largest response the kernel serves (at most {KERNEL_MAX_RESPONSE}).")
@click.option("--kernel-cache-entries", type=int, default=1024, help="Most files held in the kernel cache.")
@click.option("--autoindex", is_flag=True, help="List directories that have no index.html.")
@click.option("--access-log", is_flag=True, help="Log every userspace request (combined format).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (includes the BPF verifier log on failure).")
@click.version_option(__version__, prog_name="fileserver")
@click.pass_context
def main(ctx: click.Context, **opts: object) -> None:
    """Serve a directory over HTTP; small hot files are answered by the kernel (eBPF at TC ingress)."""
    if ctx.invoked_subcommand is not None:
        return
    verbose = bool(opts["verbose"])
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = Config(
            root=opts["root"],  # type: ignore[arg-type]
            port=opts["port"],  # type: ignore[arg-type]
            bind=opts["bind"],  # type: ignore[arg-type]
            interfaces=tuple(opts["interfaces"]),  # type: ignore[arg-type]
            kernel_cache=not opts["no_kernel_cache"],
            metrics_port=opts["metrics_port"],  # type: ignore[arg-type]
            metrics_bind=opts["metrics_bind"],  # type: ignore[arg-type]
            hot_after=opts["hot_after"],  # type: ignore[arg-type]
            max_kernel_file_size=opts["max_kernel_file_size"],  # type: ignore[arg-type]
            kernel_cache_entries=opts["kernel_cache_entries"],  # type: ignore[arg-type]
            autoindex=bool(opts["autoindex"]),
            access_log=bool(opts["access_log"]),
            verbose=verbose,
        ).validated()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None

    from fileserver.server import StartupError, serve

    try:
        asyncio.run(serve(config))
    except StartupError as e:
        raise click.ClickException(str(e)) from None
