"""The ABI between the BPF programs (bpf/) and userspace: every number, name and layout both sides
must agree on, in one place.

Each constant carries the name of the C symbol it mirrors (`#define`, enum member, struct field,
map or program name); tests/unit/test_abi.py parses the C sources and checks every one, so a change
on either side that the other does not follow fails there. Struct layouts the maps hold are not
written here: bcc gives their ctypes types (a map's `Key` and `Leaf`), and userspace uses those
fields. The one exception is the close_events record, which bcc does not type for a ring buffer.
"""

from __future__ import annotations

import ctypes as ct
import enum

# -- why the kernel passed a request on, and kernel-path errors (bpf/reasons.h) ------------------


class PassReason(enum.IntEnum):
    """enum pass_reason, PASS_<name>, in order: the index into struct counters' `pass`."""

    MISS = 0
    METHOD = enum.auto()
    CLOSING = enum.auto()
    VERSION = enum.auto()
    CLOSE = enum.auto()
    RANGE = enum.auto()
    CONDITIONAL = enum.auto()
    BODY = enum.auto()
    PIPELINED = enum.auto()
    SPLIT = enum.auto()
    TOO_LONG = enum.auto()
    ESCAPED = enum.auto()
    MALFORMED = enum.auto()
    TOO_BIG = enum.auto()
    WINDOW = enum.auto()
    OUT_OF_SYNC = enum.auto()
    USER_OWNED = enum.auto()
    TCP_OPTIONS = enum.auto()
    IP_OPTIONS = enum.auto()
    NO_CONN = enum.auto()
    STALE = enum.auto()
    CACHE_RACE = enum.auto()
    HANDSHAKE = enum.auto()
    ECN = enum.auto()
    ROUTE = enum.auto()
    ENCODING = enum.auto()

    @property
    def label(self) -> str:
        return self.name.lower()


class KernelError(enum.IntEnum):
    """enum kernel_error, ERR_<name>, in order: the index into struct counters' `errors`."""

    CHANGE_TAIL = 0
    STORE = enum.auto()
    CONN_FULL = enum.auto()
    XLATE = enum.auto()
    CLOSE_LOST = enum.auto()
    RESEND_GONE = enum.auto()

    @property
    def label(self) -> str:
        return self.name.lower()


# -- counters (struct counters, struct if_counters) ----------------------------------------------

# The scalar fields of struct counters, in order; then `pass[PASS_SLOTS]` and
# `errors[ERROR_SLOTS]`, indexed by PassReason and KernelError.
COUNTER_FIELDS = ("hits", "hit_bytes", "retransmits", "xlate_in", "xlate_out", "csum_partial", "csum_full",
                  "sack_blanked", "sack_translated", "returns", "segments", "resent", "acks", "probes", "held", "path_mtu",
                  "races", "freed", "socketless")
COUNTER_ARRAYS = ("pass", "errors")
# struct if_counters: our port's segments per interface.
IF_COUNTER_FIELDS = ("in_packets", "in_bytes", "out_packets", "out_bytes")

# -- programs and the tail-call array `progs` -----------------------------------------------------

ENTRY_PROGRAMS = ("fs_ingress", "fs_egress")   # attached by tc.py
MAX_REQ = 4096              # MAX_REQ: request bytes the kernel parses
PARSE_WINDOW = 512          # PARSE_WINDOW: bytes per parse stage
NR_PARSE_STAGES = MAX_REQ // PARSE_WINDOW   # NR_PARSE_STAGES: windows, one tail call of fs_parse each
PROG_PARSE0 = 0             # PROG_PARSE0: fs_parse's slot
MAX_SEGS = 23               # MAX_SEGS: segments of the longest answer the kernel sends (then a tail probe)

# -- size classes of cached responses (bpf/consts.h, bpf/structs.h, bpf/maps.h) ------------------

CLASS_OVERHEAD = 128                    # CLASS_OVERHEAD: hash element header, key and struct body_hdr
CLASS0_DATA = 1024 - CLASS_OVERHEAD     # CLASS0_DATA .. CLASS5_DATA: struct body<n>'s data bytes
CLASS1_DATA = 2048 - CLASS_OVERHEAD
CLASS2_DATA = 4096 - CLASS_OVERHEAD
CLASS3_DATA = 8192 - CLASS_OVERHEAD
CLASS4_DATA = 16384 - CLASS_OVERHEAD
CLASS5_DATA = 32768 - CLASS_OVERHEAD
CLASS_DATA = (CLASS0_DATA, CLASS1_DATA, CLASS2_DATA, CLASS3_DATA, CLASS4_DATA, CLASS5_DATA)
NR_CLASSES = len(CLASS_DATA)            # NR_CLASSES
# The body maps, one per class in class order (maps.h: the map holding struct body<n>).
BODY_MAPS = ("body_1k", "body_2k", "body_4k", "body_8k", "body_16k", "body_32k")
# Every map bpf/maps.h declares but the per-build tail-call array `progs`: the maps a reload keeps.
SHARED_MAPS = ("file_cache", *BODY_MAPS, "conn_state", "counters", "if_stats", "if_max_frame", "clock",
               "scratch", "answer_scratch", "egress_scratch", "close_events", "user_idle",
               "closed_conns", "nosock_closed", "conn_scratch")

PROG_SEND0 = PROG_PARSE0 + 1               # PROG_SEND0: fs_send<cls> in slot PROG_SEND0 + cls
PROG_SEG0 = PROG_SEND0 + NR_CLASSES         # PROG_SEG0: fs_seg<cls> in slot PROG_SEG0 + cls
NR_PROGS = PROG_SEG0 + NR_CLASSES           # NR_PROGS: size of `progs`
PARSE_PROGRAMS = ("fs_parse",)
SEND_PROGRAMS = tuple(f"fs_send{c}" for c in range(NR_CLASSES))
SEG_PROGRAMS = tuple(f"fs_seg{c}" for c in range(NR_CLASSES))

# -- what a cache entry holds (struct body_hdr and the data after it) -----------------------------

NM_REGION = 320             # NM_REGION: data[0, NM_REGION) holds the 304 answer, the 200 answer follows
ETAG_MAX = 48               # ETAG_MAX: longest ETag the kernel compares
INM_SCAN = 256              # INM_SCAN: longest If-None-Match value the kernel reads
# The Accept-Encoding values the kernel matches byte for byte (bpf/parse_http.h's ae_form: form n
# is AE_FORMS[n - 1], 0 is no header); cache_ref.by_form holds the answer to each.
AE_FORMS = (
    "gzip, deflate, br, zstd",   # Chromium and Firefox over HTTPS
    "gzip, deflate, br",         # older Chromium, Firefox, Safari
    "gzip, deflate",             # Chromium and Firefox over plain HTTP
    "deflate, gzip, br, zstd",   # curl --compressed
    "deflate, gzip, br",
    "deflate, gzip",
    "gzip",                      # wget --compression=auto, many libraries
    "identity",                  # wget
)
NR_AE_FORMS = len(AE_FORMS)     # NR_AE_FORMS
IMF_FIXDATE_LEN = 29        # IMF_FIXDATE_LEN: Last-Modified's value, compared with If-Modified-Since
DATE_SLOT_OFFSET = 22       # DATE_SLOT_OFFSET: where the Date slot sits in a 200 response
NM_DATE_SLOT_OFFSET = 32    # NM_DATE_SLOT_OFFSET: ... and in a 304
MAX_DATE_SLOT_OFFSET = 64   # MAX_DATE_SLOT_OFFSET: ... and at most in any stored answer (a 404's: 29)
DATE_SLOT_LEN = 32          # DATE_SLOT_LEN: " " + IMF-fixdate + CRLF (struct clock's `date`)
VERSION_DIGIT_OFFSET = 7    # VERSION_DIGIT_OFFSET: the '1' of "HTTP/1.1" in the status line
MAX_PATH = 128              # MAX_PATH: struct path_key, the file_cache key
# Fields of struct body_hdr userspace writes, in order (`pad` aside). vcsum holds the sums of the
# other variants of each kind at [kind * (NR_VARIANTS - 1) + variant - 1].
BODY_HDR_FIELDS = ("len", "csum", "head_len", "head_csum", "nm_len", "nm_csum", "etag_off", "etag_len", "vcsum",
                   "lm_off", "date_off")
# The fields userspace reads or writes through bcc's types of other structs (a ctypes Structure
# takes an assignment to a misspelt field silently, so the names are checked against the C).
STRUCT_FIELDS_USED = {
    "path_key": ("path",),
    "cache_ref": ("plain", "last_hit_ns", "hits", "by_form"),
    "body_ref": ("id", "cls", "len", "head_len"),
    "conn_state": ("delta_in", "last_seen_ns"),
    "user_idle": ("consumed", "written"),
    "clock": ("updated_ns", "date"),
}


class Variant(enum.IntEnum):
    """VAR_<name>: how aiohttp answers each form of request, from the stored HTTP/1.1 keep-alive
    bytes; the kernel makes the same bytes: a version digit and/or one header line."""

    KEEP11 = 0   # HTTP/1.1: as stored
    CLOSE11 = 1  # HTTP/1.1 with Connection: close: "Connection: close" ends the head, then close
    CLOSE10 = 2  # HTTP/1.0: "HTTP/1.0" in the status line, then close
    KEEP10 = 3   # HTTP/1.0 with Connection: keep-alive: "HTTP/1.0" and "Connection: keep-alive"


class Kind(enum.IntEnum):
    """KIND_<name>: the kinds of answer an entry holds, body_hdr.vcsum's first index."""

    FULL = 0     # the 200 response
    HEAD = 1     # its head alone (a HEAD request)
    NM = 2       # the 304 response


NR_VARIANTS = len(Variant)  # NR_VARIANTS
NR_KINDS = len(Kind)        # NR_KINDS

# -- links and the heartbeat ----------------------------------------------------------------------

ETH_HLEN_ = 14              # ETH_HLEN_: if_max_frame holds MTU + this
MAX_FRAME = 16064           # MAX_FRAME: the largest skb bpf_skb_change_tail makes

# -- close events (the close_events ring buffer) --------------------------------------------------

CLOSE_WANTED = 1            # CLOSE_WANTED: answered with a closing variant: close once acknowledged
CLOSE_NOW = 2               # CLOSE_NOW: the client acknowledged that answer: close now
CLOSE_ABORT = 3             # CLOSE_ABORT: an answer cannot be completed: reset the connection
CONN_CLOSING = 8            # CONN_CLOSING: conn_state.flags: the kernel's last answer ends the connection
CONN_CLOSE_ACKED = 16       # CONN_CLOSE_ACKED: ... and the client has acknowledged it


class ConnKeyC(ct.Structure):
    """struct conn_key (the same type bcc gives as conn_state's Key)."""

    _fields_ = [("client_ip", ct.c_uint32 * 4), ("server_ip", ct.c_uint32 * 4), ("client_port", ct.c_uint16),
                ("server_port", ct.c_uint16)]


class CloseEventC(ct.Structure):
    """struct close_event, one record of close_events."""

    _fields_ = [("key", ConnKeyC), ("kind", ct.c_uint32)]


# C #define -> its value here, for every constant above that mirrors one (tests/unit/test_abi.py).
DEFINES = {name: value for name, value in globals().items()
           if name.isupper() and isinstance(value, int) and not isinstance(value, bool)}
