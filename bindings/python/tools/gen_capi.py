#!/usr/bin/env python3
"""Generates fluxion/_capi.py (ctypes declarations) and fluxion/_capi.pyi (its type stubs) from
include/fluxion/fluxion.h, the one source of truth of the C API.

    python bindings/python/tools/gen_capi.py            # rewrite both files
    python bindings/python/tools/gen_capi.py --check    # exit 1 when they are out of date

The package build (CMake, under scikit-build-core) writes them into the wheel with --out-dir DIR,
and tests/test_capi.py fails when the committed files differ from what the header gives, or when
a public flx_ function has no Python counterpart. The parser understands the subset of C the
header is written in: enums, structs, function-pointer typedefs and FLX_API prototypes; an unknown
type is an error, never a guess.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
PKG = HERE.parent / "fluxion"
DEFAULT_HEADER = HERE.parent.parent.parent / "include" / "fluxion" / "fluxion.h"

_SCALARS = {
    "void": "None",
    "bool": "c_bool",
    "char": "c_char",
    "int": "c_int",
    "unsigned": "c_uint",
    "long": "c_long",
    "int8_t": "c_int8",
    "uint8_t": "c_uint8",
    "int16_t": "c_int16",
    "uint16_t": "c_uint16",
    "int32_t": "c_int32",
    "uint32_t": "c_uint32",
    "int64_t": "c_int64",
    "uint64_t": "c_uint64",
    "size_t": "c_size_t",
    "double": "c_double",
    "float": "c_float",
}
# Python annotation of each ctypes name, for the stubs.
_PY_TYPES = {
    "None": "None", "c_bool": "bool", "c_int": "int", "c_int32": "int", "c_int64": "int",
    "c_uint64": "int", "c_size_t": "int", "c_uint": "int", "c_long": "int", "c_int8": "int",
    "c_uint8": "int", "c_int16": "int", "c_uint16": "int", "c_uint32": "int", "c_double": "float", "c_float": "float",
    "c_void_p": "Optional[int]", "c_char_p": "Optional[bytes]",
}


class Decls:
    def __init__(self) -> None:
        self.enums: Dict[str, List[Tuple[str, int]]] = {}
        self.structs: Dict[str, List[Tuple[str, str]]] = {}  # name -> [(field, ctype expr)]
        self.opaque: List[str] = []
        self.callbacks: Dict[str, Tuple[str, List[str]]] = {}  # name -> (restype, argtypes)
        self.functions: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {}  # name -> (res, [(arg, ctype)])
        self.defines: Dict[str, str] = {}
        self.aliases: Dict[str, str] = {}  # typedef <type> name;


def _strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", " ", src)


def _norm(s: str) -> str:
    return " ".join(s.replace("*", " * ").split())


class Parser:
    def __init__(self, src: str) -> None:
        self.d = Decls()
        self.src = _strip_comments(src)

    # -- types --
    def ctype(self, t: str, where: str) -> str:
        """ctypes expression of a C type (without a declarator name)."""
        t = _norm(t)
        stars = t.count("*")
        base = " ".join(w for w in t.replace("*", " ").split() if w not in ("const", "struct", "enum"))
        d = self.d
        if base in d.opaque or base == "void" and stars >= 1:
            # flx_tensor *, flx_ctx *, void *: a plain address; one more level is an array of them
            if stars == 0:
                raise ValueError(f"{where}: opaque type {base} by value")
            return "c_void_p" if stars == 1 else _ptr("c_void_p", stars - 1)
        if base == "char" and stars >= 1:
            return "c_char_p" if stars == 1 else _ptr("c_char_p", stars - 1)
        if base in d.aliases:
            return self.ctype(d.aliases[base] + " *" * stars, where)
        if base in _SCALARS:
            return _ptr(_SCALARS[base], stars)
        if base in d.enums:
            return _ptr("c_int", stars)
        if base in d.structs:
            return _ptr(base, stars)
        if base in d.callbacks:
            if stars:
                raise ValueError(f"{where}: pointer to callback {base}")
            return base
        raise ValueError(f"{where}: unknown C type {t!r}")

    def split_decl(self, decl: str, where: str) -> Tuple[str, str]:
        """'const int64_t *shape' -> ('const int64_t *', 'shape')."""
        decl = decl.strip()
        m = re.match(r"^(.*?)([A-Za-z_]\w*)\s*(\[\s*\w+\s*\])?$", decl, flags=re.S)
        if not m or not m.group(1).strip():
            raise ValueError(f"{where}: cannot parse declaration {decl!r}")
        t = m.group(1)
        if m.group(3):
            n = m.group(3).strip("[] ")
            n = self.d.defines.get(n, n)
            return t + f"[{n}]", m.group(2)
        return t, m.group(2)

    def param(self, p: str, where: str) -> Tuple[str, str]:
        p = p.strip()
        fp = re.match(r"^(.*?)\(\s*\*\s*(\w+)\s*\)\s*\((.*)\)$", p, flags=re.S)
        if fp:  # inline function pointer: void (*destroy)(void *user)
            res = self.ctype(fp.group(1), where)
            args = [self.ctype(self.split_decl(a, where)[0], where)
                    for a in _split_args(fp.group(3))]
            # named once at module level, so every caller passes an instance of the same type
            cb = f"{where}__{fp.group(2)}"
            self.d.callbacks[cb] = (res, args)
            return cb, fp.group(2)
        t, name = self.split_decl(p, where)
        arr = re.search(r"\[(\w+)\]$", t)
        if arr:
            return f"({self.ctype(t[: arr.start()], where)} * {arr.group(1)})", name
        return self.ctype(t, where), name

    # -- top level --
    def parse(self) -> Decls:
        s = self.src
        d = self.d
        for m in re.finditer(r"#define\s+(FLX_\w+)\s+([^\s].*)", s):
            d.defines[m.group(1)] = m.group(2).strip()
        pos = 0
        item = re.compile(
            r"typedef\s+enum\s+\w*\s*\{(?P<ebody>.*?)\}\s*(?P<ename>\w+)\s*;"
            r"|typedef\s+struct\s+\w*\s*\{(?P<sbody>.*?)\}\s*(?P<sname>\w+)\s*;"
            r"|typedef\s+struct\s+\w+\s+(?P<oname>\w+)\s*;"
            r"|typedef\s+(?P<abase>(?:unsigned\s+)?\w+)\s+(?P<aname>\w+)\s*;"
            r"|typedef\s+(?P<cres>[^;{}()]*?)\(\s*\*\s*(?P<cname>\w+)\s*\)\s*\((?P<cargs>[^;]*?)\)\s*;"
            r"|FLX_API\s+(?P<fdecl>[^;#]*?)\((?P<fargs>[^;#]*)\)\s*;",
            flags=re.S)
        for m in item.finditer(s, pos):
            if m.group("ename"):
                vals: List[Tuple[str, int]] = []
                nxt = 0
                for e in m.group("ebody").split(","):
                    e = e.strip()
                    if not e:
                        continue
                    name, _, v = e.partition("=")
                    name = name.strip()
                    if v.strip():
                        nxt = int(v.strip(), 0)
                    vals.append((name, nxt))
                    nxt += 1
                d.enums[m.group("ename")] = vals
            elif m.group("sname"):
                name = m.group("sname")
                fields: List[Tuple[str, str]] = []
                for f in m.group("sbody").split(";"):
                    f = f.strip()
                    if not f:
                        continue
                    first, *more = [x.strip() for x in f.split(",")]
                    t, fname = self.param(first, f"struct {name}")
                    fields.append((fname, t))
                    base = re.match(r"^(.*?)\**\s*\w+\s*(\[\w+\])?$", first).group(1)
                    base = re.sub(r"\*", "", base)
                    for extra in more:
                        et, en = self.param(base + " " + extra, f"struct {name}")
                        fields.append((en, et))
                d.structs[name] = fields
            elif m.group("oname"):
                d.opaque.append(m.group("oname"))
            elif m.group("aname"):
                d.aliases[m.group("aname")] = m.group("abase")
            elif m.group("cname"):
                where = m.group("cname")
                res = self.ctype(m.group("cres"), where)
                args = [self.param(a, where)[0] for a in _split_args(m.group("cargs"))]
                d.callbacks[where] = (res, args)
            elif m.group("fdecl") is not None:
                rt, fname = self.split_decl(m.group("fdecl"), "FLX_API")
                res = self.ctype(rt, fname)
                args = [self.param(a, fname) for a in _split_args(m.group("fargs"))]
                d.functions[fname] = (res, [(n, t) for t, n in args])
        return d


def _ptr(base: str, n: int) -> str:
    for _ in range(n):
        base = f"POINTER({base})"
    return base


def _split_args(args: str) -> List[str]:
    args = args.strip()
    if args in ("", "void"):
        return []
    out, depth, cur = [], 0, ""
    for ch in args:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [a.strip() for a in out]


def parse_header(path: Path = DEFAULT_HEADER) -> Decls:
    return Parser(path.read_text()).parse()


# ---- emitters ------------------------------------------------------------------------------------
_BANNER = ("# Generated by bindings/python/tools/gen_capi.py from include/fluxion/fluxion.h: "
           "do not edit.\n")


def emit_py(d: Decls) -> str:
    out = [_BANNER, '"""ctypes declarations of the whole fluxion C API (constants, enums, structs,\n'
           'callbacks, prototypes), generated from the public header."""\n',
           "from ctypes import *  # noqa: F401,F403 - the generated code names any ctypes type",
           "", "# ---- numeric constants (#define) ----"]
    for name, val in _numeric_defines(d):
        out.append(f"{name} = {val}")
    out += ["", "# ---- enums ----"]
    for name, vals in d.enums.items():
        for k, v in vals:
            out.append(f"{k} = {v}")
    out += ["", "# ---- structs ----"]
    for name, fields in d.structs.items():
        out.append(f"\n\nclass {name}(Structure):")
        out.append("    _fields_ = [")
        for fname, t in fields:
            out.append(f"        ({fname!r}, {t}),")
        out.append("    ]")
    out += ["", "", "# ---- callback types ----"]
    for name, (res, args) in d.callbacks.items():
        out.append(f"{name} = CFUNCTYPE({', '.join([res] + args)})")
    out += ["", "# ---- prototypes, one line per C signature: restype, ((argument, ctype), ...), and the",
            "# functions declared with it ----", "_SIGNATURES = ("]
    for (res, args), names in _signature_groups(d).items():
        out.append(f"    ({res}, ({''.join(f'({n!r}, {t}), ' for n, t in args).rstrip()}), {' '.join(names)!r}),")
    out += [")",
            "PROTOTYPES = {f: (res, [t for _, t in args]) for res, args, fs in _SIGNATURES for f in fs.split()}",
            "ARG_NAMES = {f: tuple(n for n, _ in args) for _, args, fs in _SIGNATURES for f in fs.split()}"]
    return "\n".join(out) + "\n"


def _signature_groups(d: Decls) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], List[str]]:
    """The functions by C signature (restype and named arguments), in header order: one
    declaration serves each group, so the generated files repeat no signature."""
    groups: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], List[str]] = {}
    for name, (res, args) in d.functions.items():
        groups.setdefault((res, tuple(args)), []).append(name)
    return groups


def _numeric_defines(d: Decls) -> List[Tuple[str, str]]:
    out = []
    for name, val in d.defines.items():
        v = val.strip()
        if re.fullmatch(r"[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|0[xX][0-9a-fA-F]+)", v):
            out.append((name, v))
    return out


def _py_type(t: str) -> str:
    if t in _PY_TYPES:
        return _PY_TYPES[t]
    return "Any"


def emit_pyi(d: Decls) -> str:
    out = [_BANNER.replace("# Generated", "# Stubs generated"),
           "from ctypes import Structure",
           "from typing import Any, Callable, Dict, List, Optional, Tuple", ""]
    for name, val in _numeric_defines(d):
        out.append(f"{name}: {'float' if '.' in val or 'e' in val.lower() and not val.lower().startswith('0x') else 'int'}")
    for vals in d.enums.values():
        for k, _ in vals:
            out.append(f"{k}: int")
    out.append("")
    for name, fields in d.structs.items():
        out.append(f"class {name}(Structure):")
        for fname, t in fields:
            out.append(f"    {fname}: {_py_type(t)}")
        out.append("")
    for name in d.callbacks:
        out.append(f"{name}: Any")
    out.append("PROTOTYPES: Dict[str, Tuple[Any, List[Any]]]")
    out.append("ARG_NAMES: Dict[str, Tuple[str, ...]]")
    out.append("")
    out.append("class _Library:")
    out.append('    """The loaded libfluxion (fluxion._lib.lib): one typed method per C function."""')
    for (res, args), (first, *same) in _signature_groups(d).items():
        # a C parameter named like a Python keyword (lambda) takes a trailing underscore
        params = "".join(f", {n}{'_' * keyword.iskeyword(n)}: {_py_type(t)}" for n, t in args)
        out.append(f"    def {first}(self{params}) -> {_py_type(res)}: ...")
        if same:
            out.append(f"    {' = '.join(same)} = {first}")
    return "\n".join(out) + "\n"


def generate(header: Path = DEFAULT_HEADER) -> Dict[Path, str]:
    d = parse_header(header)
    return {PKG / "_capi.py": emit_py(d), PKG / "_capi.pyi": emit_pyi(d)}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--header", type=Path, default=DEFAULT_HEADER)
    ap.add_argument("--check", action="store_true", help="exit 1 when the files are out of date")
    ap.add_argument("--out-dir", type=Path, help="write the files there instead of into fluxion/")
    a = ap.parse_args(argv)
    stale = []
    for path, text in generate(a.header).items():
        if a.out_dir is not None:
            a.out_dir.mkdir(parents=True, exist_ok=True)
            path = a.out_dir / path.name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not a.check:
            path.write_text(text)
            print(f"gen_capi: wrote {path}")
    if a.check and stale:
        print("gen_capi: out of date: " + ", ".join(str(p) for p in stale) +
              " (run python bindings/python/tools/gen_capi.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
