"""The record header has one layout: struct migrator_hdr in bpf/migrator.h (MIGRATOR_HDR_FIELDS).

A small C program includes the header as user space does (-DMIGRATOR_USERSPACE, as native.c does)
and prints the field list and every field's offset and size; the Python dtype (frames.HDR_DTYPE)
must name the same fields in the same order at the same offsets with the same sizes, and
struct migrator_record must start with the same fields. native.c has no layout of its own: it
includes the header and reads fields through offsetof.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from kernel_util import unavailable
from migrator.dataplane import native
from migrator.dataplane.channel import MigratorHdr
from migrator.dataplane.frames import HDR_DTYPE, HDR_SIZE
from migrator.shared.resources import bpf_dir


def layout_program() -> str:
    """C that prints the stringized field list, then `struct field offset size` per dtype field."""
    lines = [f'    F(migrator_hdr, {n});\n    F(migrator_record, {n});' for n in HDR_DTYPE.names]
    return ("#define MIGRATOR_USERSPACE\n#include <migrator.h>\n#include <stddef.h>\n#include <stdio.h>\n"
            "#define STR_(x) #x\n#define STR(x) STR_(x)\n"
            '#define F(s, f) printf("%s %s %zu %zu\\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))\n'
            "int main(void)\n{\n"
            '    printf("fields %s\\n", STR(MIGRATOR_HDR_FIELDS));\n'
            '    printf("sizeof migrator_hdr %zu\\n", sizeof(struct migrator_hdr));\n'
            '    printf("offsetof migrator_record.data %zu\\n", offsetof(struct migrator_record, data));\n'
            + "\n".join(lines) + "\n    return 0;\n}\n")


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    cc = native.compiler()
    if cc is None:
        unavailable("no C compiler (cc, gcc or $CC)")
    d = tmp_path_factory.mktemp("layout")
    (d / "layout.c").write_text(layout_program())
    built = subprocess.run([cc, "-Wall", "-Werror", f"-I{bpf_dir()}", "-o", str(d / "layout"), str(d / "layout.c")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr  # a dtype field the C struct does not have fails here
    out = subprocess.run([str(d / "layout")], capture_output=True, text=True, check=True).stdout.splitlines()
    fields = re.findall(r"\b(\w+)\s*;", out[0].removeprefix("fields "))
    sizeof = int(out[1].split()[-1])
    data_at = int(out[2].split()[-1])
    at = {(s, f): (int(o), int(n)) for s, f, o, n in (line.split() for line in out[3:])}
    return fields, sizeof, data_at, at


def test_dtype_names_the_c_fields_in_order(c_layout):
    fields, _, _, _ = c_layout
    assert tuple(fields) == HDR_DTYPE.names


def test_dtype_offsets_and_sizes_are_the_c_structs(c_layout):
    _, sizeof, data_at, at = c_layout
    assert sizeof == HDR_SIZE == HDR_DTYPE.itemsize == 32
    for name in HDR_DTYPE.names:
        dt, off = HDR_DTYPE.fields[name][:2]
        assert at[("migrator_hdr", name)] == (off, dt.itemsize), name
        assert at[("migrator_record", name)] == (off, dt.itemsize), name  # the flat copy bcc decodes
    assert data_at == HDR_SIZE  # the payload follows the header


def test_the_ctypes_header_is_the_dtype():
    assert [f for f, _ in MigratorHdr._fields_] == list(HDR_DTYPE.names)
    for name in HDR_DTYPE.names:
        dt, off = HDR_DTYPE.fields[name][:2]
        assert (getattr(MigratorHdr, name).offset, getattr(MigratorHdr, name).size) == (off, dt.itemsize)


def test_native_takes_the_layout_from_the_header():
    src = "".join(p.read_text() for p in native.SOURCES)
    assert "#include <migrator.h>" in src
    assert "struct migrator_hdr {" not in src  # no second declaration
    # every header field is read through HDR_GET (offsetof), none at a hard-coded byte offset
    assert re.findall(r"\bld(?:16|32|64)\((?:h|rec|hdr)\b[^)]*\)", src) == []
