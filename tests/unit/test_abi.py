"""fileserver/abi.py agrees with the C sources: every constant, enum order, name and struct size.

The C side is read as text (no compiler, no root): every file under bpf/ is searched, so a define
or a struct may move between headers. `#define` values are evaluated with the other defines
substituted, and struct sizes computed with C's natural alignment.
"""

from __future__ import annotations

import ast
import ctypes as ct
import operator
import re
from dataclasses import dataclass, fields
from pathlib import Path

from fileserver import abi
from fileserver.maps import Counters
from tests.support import REPO

SCALARS = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8, "u8": 1, "u16": 2, "u32": 4, "u64": 8, "char": 1, "int": 4}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.floordiv,
        ast.FloorDiv: operator.floordiv, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
        ast.BitOr: operator.or_, ast.BitAnd: operator.and_}


@dataclass
class CField:
    ctype: str      # "__u32", "struct conn_key", ...
    name: str
    count: str      # array length expression, "" for a scalar


class CSources:
    """What the BPF sources declare, from all of bpf/*.h and bpf/*.c."""

    def __init__(self, directory: Path) -> None:
        text = "\n".join(p.read_text() for p in sorted(directory.glob("*.[ch]")))
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        self.text = text.replace("\\\n", " ")
        self.defines: dict[str, str] = {}
        for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\(?)[ \t]*(.*)$", self.text, re.M):
            if not m.group(2):
                self.defines.setdefault(m.group(1), m.group(3).strip())
        self.enums: dict[str, list[str]] = {}
        self.enum_values: dict[str, int] = {}
        for m in re.finditer(r"\benum\s+(\w+)\s*\{(.*?)\}", self.text, re.S):
            members, value = [], 0
            for item in (i.strip() for i in m.group(2).split(",")):
                if item:
                    name, _, given = (p.strip() for p in item.partition("="))
                    value = self.value(given) if given else value
                    members.append(name)
                    self.enum_values[name] = value
                    value += 1
            self.enums[m.group(1)] = members
        self._bodies: dict[str, str] = {}   # struct name -> the text between its braces
        for m in re.finditer(r"\bstruct\s+(\w+)\s*\{", self.text):
            depth, end = 1, m.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(self.text[end], 0)
                end += 1
            self._bodies.setdefault(m.group(1), self.text[m.end():end - 1])
        # struct body<n> comes from a macro: BODY_STRUCT(n, size) is struct body_hdr h, then __u8 data[size].
        for m in re.finditer(r"^\s*BODY_STRUCT\(\s*(\d+)\s*,\s*(\w+)\s*\)\s*;", self.text, re.M):
            self._bodies.setdefault(f"body{m.group(1)}", f"struct body_hdr h; __u8 data[{m.group(2)}];")

    @staticmethod
    def _field(decl: str) -> CField:
        m = re.fullmatch(r"\s*((?:struct\s+)?\w+)\s+(\w+)\s*(?:\[(.*)\])?\s*", decl, re.S)
        assert m, f"cannot read the struct field {decl.strip()!r}"
        return CField(" ".join(m.group(1).split()), m.group(2), (m.group(3) or "").strip())

    def value(self, expr: str) -> int:
        """A constant expression of integers and other defines, as C evaluates it."""
        expr = re.sub(r"\b(\d+)(?:ULL|UL|LL|U|L)\b", r"\1", expr)
        expr = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: f"({self.define(m.group(0))})", expr)
        return _evaluate(ast.parse(expr, mode="eval").body)

    def define(self, name: str) -> int:
        """A #define's value (or an enum member's, which an expression may use as well)."""
        if name in self.enum_values:
            return self.enum_values[name]
        assert name in self.defines, f"no #define {name} under bpf/"
        return self.value(self.defines[name])

    def size(self, ctype: str) -> tuple[int, int]:
        """(size, alignment) of a C type."""
        if ctype in SCALARS:
            return SCALARS[ctype], SCALARS[ctype]
        offset, align = 0, 1
        for f in self.fields(ctype.removeprefix("struct ")):
            size, a = self.size(f.ctype)
            offset = -(-offset // a) * a + size * (self.value(f.count) if f.count else 1)
            align = max(align, a)
        return -(-offset // align) * align, align

    def fields(self, struct: str) -> list[CField]:
        assert struct in self._bodies, f"no struct {struct} under bpf/"
        return [self._field(decl) for decl in self._bodies[struct].split(";") if decl.strip()]

    def field_names(self, struct: str) -> list[str]:
        return [f.name for f in self.fields(struct)]

    def field(self, struct: str, name: str) -> CField:
        return next(f for f in self.fields(struct) if f.name == name)

    def maps(self) -> dict[str, str]:
        """Map name -> its value type, for every table the sources declare (macro bodies aside)."""
        body = re.sub(r"^[ \t]*#[ \t]*define[^\n]*", "", self.text, flags=re.M)
        found = {m.group(2): " ".join(m.group(1).split())
                 for m in re.finditer(r"\b\w*TABLE\(\s*\"[^\"]*\"\s*,\s*[^,]+,\s*([^,]+),\s*(\w+)\s*,", body)}
        found.update({m.group(1): "ringbuf" for m in re.finditer(r"\b\w*RINGBUF\w*\(\s*(\w+)\s*,", body)})
        return found

    def programs(self) -> set[str]:
        return set(re.findall(r"\bint\s+(\w+)\s*\(\s*struct\s+__sk_buff\s*\*\s*\w+\s*\)\s*\{", self.text))


def _evaluate(node: ast.expr) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return int(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise AssertionError(f"not a constant expression: {ast.unparse(node)}")


def test_abi_matches_the_c_sources() -> None:
    c = CSources(REPO / "bpf")
    wrong: list[str] = []

    def check(what: str, c_side: object, py_side: object) -> None:
        if c_side != py_side:
            wrong.append(f"{what}: C has {c_side!r}, fileserver/abi.py {py_side!r}")

    # Every #define abi.py mirrors, by name.
    for name, value in abi.DEFINES.items():
        check(f"#define {name}", c.define(name), value)
    check("CLASS<n>_DATA, in order", [c.define(f"CLASS{i}_DATA") for i in range(c.define("NR_CLASSES"))],
          list(abi.CLASS_DATA))

    # Enums: order and number.
    check("enum pass_reason", c.enums["pass_reason"], [f"PASS_{r.name}" for r in abi.PassReason] + ["NR_PASS_REASONS"])
    check("enum kernel_error", c.enums["kernel_error"], [f"ERR_{e.name}" for e in abi.KernelError] + ["NR_KERNEL_ERRORS"])
    check("VAR_*", [c.define(f"VAR_{v.name}") for v in abi.Variant], [v.value for v in abi.Variant])
    check("KIND_*", [c.define(f"KIND_{k.name}") for k in abi.Kind], [k.value for k in abi.Kind])

    # Counters: the scalar fields, then one slot per pass reason and per error.
    check("struct counters", c.field_names("counters"), [*abi.COUNTER_FIELDS, *abi.COUNTER_ARRAYS])
    for array, enum in zip(abi.COUNTER_ARRAYS, (abi.PassReason, abi.KernelError)):
        slots = c.value(c.field("counters", array).count)
        check(f"counters.{array} holds every {enum.__name__}", slots >= len(enum), True)
    check("struct if_counters", c.field_names("if_counters"), list(abi.IF_COUNTER_FIELDS))
    check("Counters (fileserver/maps.py)", [f.name for f in fields(Counters)],
          [*abi.COUNTER_FIELDS, "passes", "errors"])

    # Struct layouts: the fields userspace writes, and the sizes of the types it builds itself.
    check("struct body_hdr", [n for n in c.field_names("body_hdr") if not n.startswith("pad")], list(abi.BODY_HDR_FIELDS))
    check("body_hdr.vcsum length", c.value(c.field("body_hdr", "vcsum").count), abi.NR_KINDS * (abi.NR_VARIANTS - 1))
    for struct, ctype in (("conn_key", abi.ConnKeyC), ("close_event", abi.CloseEventC)):
        check(f"struct {struct} fields", c.field_names(struct), [f[0] for f in ctype._fields_])
        check(f"sizeof(struct {struct})", c.size(f"struct {struct}")[0], ct.sizeof(ctype))
    check("sizeof(struct path_key)", c.size("struct path_key")[0], abi.MAX_PATH)
    check("clock.date length", c.value(c.field("clock", "date").count), abi.DATE_SLOT_LEN)
    for struct, names in abi.STRUCT_FIELDS_USED.items():
        missing = [n for n in names if n not in c.field_names(struct)]
        check(f"fields of struct {struct} userspace uses, missing in C", missing, [])

    # Maps and programs, by name.
    tables = c.maps()
    check("body maps, in class order", [tables.get(m) for m in abi.BODY_MAPS],
          [f"struct body{i}" for i in range(abi.NR_CLASSES)])
    check("shared maps", sorted(set(tables) - {"progs"}), sorted(abi.SHARED_MAPS))
    for cls in range(abi.NR_CLASSES):
        check(f"sizeof(struct body{cls})", c.size(f"struct body{cls}")[0], c.size("struct body_hdr")[0] + abi.CLASS_DATA[cls])
    programs = [*abi.ENTRY_PROGRAMS, *abi.PARSE_PROGRAMS, *abi.SEND_PROGRAMS, *abi.SEG_PROGRAMS]
    check("programs missing in C", sorted(set(programs) - c.programs()), [])
    check("the progs array", c.define("NR_PROGS"), len(programs) - len(abi.ENTRY_PROGRAMS))

    check("cache_ref.by_form length", c.value(c.field("cache_ref", "by_form").count), abi.NR_AE_FORMS)
    forms = re.findall(r'AE_IS\(v, "([^"]*)"\)\)\s*return (\d+);', (REPO / "bpf" / "parse_http.h").read_text())
    check("ae_form's values, in order", forms, [(f, str(n)) for n, f in enumerate(abi.AE_FORMS, 1)])

    assert not wrong, "fileserver/abi.py and bpf/ disagree:\n" + "\n".join(wrong)

