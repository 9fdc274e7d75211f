"""Attach and detach this project's TC filters with pyroute2, touching nothing else.

Our filters are recognised by their name, `fileserver:<port>:<direction>`: start-up removes the ones
an earlier crashed instance on the same port left behind, stop removes the ones it attached. Other
programs' filters and qdiscs are never touched; the clsact qdisc is removed only if this process
created it (or found it holding nothing but our stale filters) and nothing else uses it any more.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("fileserver.tc")

INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
HOOKS = {"ingress": INGRESS, "egress": EGRESS}
NAME_PREFIX = "fileserver:"


class TcError(RuntimeError):
    pass


def filter_name(port: int, direction: str) -> str:
    return f"{NAME_PREFIX}{port}:{direction}"


@dataclass(frozen=True)
class FilterRef:
    ifindex: int
    parent: str
    prio: int
    handle: int
    name: str


def _bpf_name(msg: object) -> str | None:
    opts = msg.get_attr("TCA_OPTIONS")  # type: ignore[attr-defined]
    return opts.get_attr("TCA_BPF_NAME") if opts is not None else None


def list_filters(ipr: IPRoute, ifindex: int) -> list[FilterRef]:
    """Every bpf filter on the interface's clsact hooks (ours and others')."""
    refs = []
    for parent in (INGRESS, EGRESS):
        try:
            msgs = ipr.get_filters(ifindex, parent=parent)
        except NetlinkError as e:
            if e.code in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc
                continue
            raise
        for msg in msgs:
            if msg.get_attr("TCA_KIND") != "bpf" or not msg["handle"]:
                continue  # the per-prio chain header, not a filter
            name = _bpf_name(msg) or ""
            refs.append(FilterRef(ifindex, parent, msg["info"] >> 16, msg["handle"], name))
    return refs


def has_clsact(ipr: IPRoute, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(ifindex))


def delete_filter(ipr: IPRoute, ref: FilterRef) -> None:
    try:
        ipr.tc("del-filter", "bpf", ref.ifindex, handle=ref.handle, parent=ref.parent, prio=ref.prio)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL):
            raise


@dataclass
class Attachment:
    """Our filters on one interface, and whether the clsact qdisc is ours to remove."""

    ifname: str
    ifindex: int
    port: int
    owns_qdisc: bool
    filters: list[FilterRef] = field(default_factory=list)


def attach(ifname: str, port: int, fds: dict[str, int]) -> Attachment:
    """Attach the programs in fds ({"ingress": fd, "egress": fd}) as direct-action filters."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise TcError(f"no interface named {ifname!r} (see `ip link`)")
        ifindex = found[0]
        stale = [f for f in list_filters(ipr, ifindex) if f.name.startswith(f"{NAME_PREFIX}{port}:")]
        for ref in stale:
            log.info("removing stale filter %s on %s left by an earlier instance", ref.name, ifname)
            delete_filter(ipr, ref)
        others = [f for f in list_filters(ipr, ifindex)]
        owns_qdisc = False
        if not has_clsact(ipr, ifindex):
            ipr.tc("add", "clsact", ifindex)
            owns_qdisc = True
        elif stale and not others:
            owns_qdisc = True  # it only held our crashed instance's filters: it was ours
        att = Attachment(ifname, ifindex, port, owns_qdisc)
        try:
            for direction, fd in fds.items():
                name = filter_name(port, direction)
                ipr.tc("add-filter", "bpf", ifindex, fd=fd, name=name, parent=HOOKS[direction], direct_action=True)
            att.filters = [f for f in list_filters(ipr, ifindex) if f.name.startswith(f"{NAME_PREFIX}{port}:")]
        except NetlinkError as e:
            _detach(ipr, att)
            raise TcError(f"could not attach TC filters on {ifname}: {e}") from e
        return att


def replace(att: Attachment, fds: dict[str, int]) -> None:
    """Point our existing filters at new programs in place: `change` on the same parent, priority
    and handle (it fails rather than add a filter if ours is gone). cls_bpf swaps the program
    under RCU, so there is no moment without a filter."""
    with IPRoute() as ipr:
        for ref in att.filters:
            direction = next(d for d, parent in HOOKS.items() if parent == ref.parent)
            try:
                ipr.tc("change-filter", "bpf", ref.ifindex, fd=fds[direction], name=ref.name, parent=ref.parent,
                       prio=ref.prio, handle=ref.handle, direct_action=True)
            except NetlinkError as e:
                raise TcError(f"could not swap the programs of {ref.name} on {att.ifname}: {e}") from e


def detach(att: Attachment) -> None:
    with IPRoute() as ipr:
        _detach(ipr, att)


def _detach(ipr: IPRoute, att: Attachment) -> None:
    mine = [f for f in list_filters(ipr, att.ifindex) if f.name.startswith(f"{NAME_PREFIX}{att.port}:")]
    for ref in mine:
        delete_filter(ipr, ref)
    if att.owns_qdisc and not list_filters(ipr, att.ifindex) and not _has_other_filters(ipr, att.ifindex):
        try:
            ipr.tc("del", "clsact", att.ifindex)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL):
                raise


def _has_other_filters(ipr: IPRoute, ifindex: int) -> bool:
    """Non-bpf filters (u32, ...) on the clsact hooks also keep the qdisc alive."""
    for parent in (INGRESS, EGRESS):
        try:
            if any(m["handle"] for m in ipr.get_filters(ifindex, parent=parent)):
                return True
        except NetlinkError:
            continue
    return False


def detach_port(ifname: str, port: int) -> int:
    """Remove every filter of ours for this port on the interface (for `fileserver detach`)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise TcError(f"no interface named {ifname!r}")
        mine = [f for f in list_filters(ipr, found[0]) if f.name.startswith(f"{NAME_PREFIX}{port}:")]
        for ref in mine:
            delete_filter(ipr, ref)
        return len(mine)
