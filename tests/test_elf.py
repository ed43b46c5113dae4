"""The ELF closure: headers of every class and byte order, ld.so's search order,
malformed input, and the real bookworm rootfs."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rootfs_factory import make_tar

from nbic.elf import Closure, Elf, Kind, Missing, Needed, interpreter, needed_closure, parse_elf
from nbic.errors import ElfError, RootfsError
from nbic.tree import DirTree, TarTree

EM_386, EM_MIPS, EM_S390, EM_X86_64 = 3, 8, 22, 62
X86_64 = Kind(2, 1, EM_X86_64)
BASE = 0x400000  # where the crafted files are mapped: DT_STRTAB is an address, not an offset


def craft_elf(*, bits: int = 64, big_endian: bool = False, machine: int = EM_X86_64,
              interp: str | None = None, needed: tuple[str, ...] = (), soname: str | None = None,
              rpath: str | None = None, runpath: str | None = None) -> bytes:
    """An ELF file laid out header, program headers, PT_INTERP, dynamic section, strings:
    every byte of it up to the last string's NUL is something the parser reads."""
    order = ">" if big_endian else "<"
    is64 = bits == 64
    header = struct.Struct(order + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH"))
    segment = struct.Struct(order + ("IIQQQQQQ" if is64 else "8I"))
    dyn = struct.Struct(order + ("QQ" if is64 else "II"))
    strings = bytearray(b"\0")

    def string(text: str) -> int:
        strings.extend(text.encode() + b"\0")
        return len(strings) - len(text.encode()) - 1

    tags = [(1, string(name)) for name in needed]
    for tag, value in ((14, soname), (15, rpath), (29, runpath)):
        if value is not None:
            tags.append((tag, string(value)))
    interp_data = interp.encode() + b"\0" if interp is not None else b""
    phnum = 3 if interp is not None else 2
    phoff = 16 + header.size
    interp_offset = phoff + phnum * segment.size
    dynamic_offset = interp_offset + len(interp_data)
    strtab_offset = dynamic_offset + (len(tags) + 3) * dyn.size
    tags += [(5, BASE + strtab_offset), (10, len(strings)), (0, 0)]
    size = strtab_offset + len(strings)

    def program_header(kind: int, offset: int, vaddr: int, filesz: int) -> bytes:
        if is64:
            return segment.pack(kind, 4, offset, vaddr, vaddr, filesz, filesz, 8)
        return segment.pack(kind, offset, vaddr, vaddr, filesz, filesz, 4, 4)

    segments = [program_header(1, 0, BASE, size)]
    if interp is not None:
        segments.append(program_header(3, interp_offset, BASE + interp_offset, len(interp_data)))
    segments.append(program_header(2, dynamic_offset, BASE + dynamic_offset,
                                   len(tags) * dyn.size))
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 2 if big_endian else 1, 1]) + bytes(9)
    data = (ident + header.pack(3, machine, 1, 0, phoff, 0, 0, 16 + header.size,
                                segment.size, phnum, 0, 0, 0)
            + b"".join(segments) + interp_data + b"".join(dyn.pack(*tag) for tag in tags)
            + bytes(strings))
    assert len(data) == size
    return data


def put(root: Path, path: str, data: bytes | str, mode: int = 0o755) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    target.chmod(mode)


def link(root: Path, path: str, to: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(to)


def parse(data: bytes) -> Elf | None:
    return parse_elf(io.BytesIO(data), len(data), "/test")


# --- headers ------------------------------------------------------------------

@pytest.mark.parametrize(("bits", "big_endian", "machine"), [
    (64, False, EM_X86_64), (32, False, EM_386), (64, True, EM_S390), (32, True, EM_MIPS)])
def test_every_class_and_byte_order(bits, big_endian, machine):
    data = craft_elf(bits=bits, big_endian=big_endian, machine=machine, interp="/lib/ld.so.1",
                     needed=("liba.so.1", "libb.so.2"), soname="libself.so.1",
                     rpath="/r", runpath="$ORIGIN/../lib")
    assert parse(data) == Elf(Kind(1 + (bits == 64), 1 + big_endian, machine), "/lib/ld.so.1",
                              ("liba.so.1", "libb.so.2"), "libself.so.1",
                              None,  # DT_RPATH is ignored when there is a DT_RUNPATH
                              "$ORIGIN/../lib")
    assert parse(craft_elf(bits=bits, big_endian=big_endian, rpath="/r")).rpath == "/r"


def test_not_an_elf_file():
    for data in (b"", b"\x7fEL", b"#!/bin/sh\n", b"\0" * 100, b"ELF\x7f" + bytes(60)):
        assert parse(data) is None


@pytest.mark.parametrize("bits", [32, 64])
def test_truncation_at_every_offset_is_an_elf_error(bits):
    data = craft_elf(bits=bits, interp="/lib/ld.so", needed=("libc.so.6",), runpath="/x")
    assert parse(data).needed == ("libc.so.6",)
    for size in range(4):
        assert parse(data[:size]) is None
    for size in range(4, len(data)):
        with pytest.raises(ElfError, match="malformed ELF /test"):
            parse(data[:size])


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def test_absurd_headers_are_clear_errors():
    data = craft_elf(interp="/lib/ld.so", needed=("libc.so.6",))
    interp_at, dynamic_at = 64 + 3 * 56, 64 + 3 * 56 + len(b"/lib/ld.so\0")
    cases = {
        "unknown ELF class 3": patched(data, 4, "B", 3),
        "too many program headers: 65535": patched(data, 56, "<H", 0xFFFF),
        "program headers of 8 bytes are too small": patched(data, 54, "<H", 8),
        "the program header table .* runs past the end": patched(data, 32, "<Q", 2**64 - 1),
        "PT_INTERP of 0 bytes": patched(data, 64 + 56 + 32, "<Q", 0),
        "PT_INTERP is not NUL-terminated": patched(data, interp_at + 10, "B", ord("x")),
        "a dynamic section of": patched(data, 64 + 2 * 56 + 32, "<Q", 1 << 40),
        "DT_STRTAB 0x10 is in no PT_LOAD segment": patched(data, dynamic_at + 24, "<Q", 0x10),
        "DT_NEEDED at string 999, past DT_STRSZ": patched(data, dynamic_at + 8, "<Q", 999),
        "dynamic strings but no DT_STRTAB": patched(data, dynamic_at + 16, "<Q", 10),
    }
    for message, bad in cases.items():
        with pytest.raises(ElfError, match=message):
            parse(bad)
    strings_at = len(data) - len(b"\0libc.so.6\0")
    with pytest.raises(ElfError, match="DT_NEEDED is not NUL-terminated"):
        parse(data[:-1] + b"x")
    assert parse(data[:strings_at] + b"\0" * 11).needed == ("",)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_headers_raise_only_elf_errors(data):
    valid = craft_elf(bits=data.draw(st.sampled_from([32, 64])),
                      big_endian=data.draw(st.booleans()), interp="/lib/ld.so",
                      needed=("liba.so", "libb.so"), rpath="/r")
    corrupt = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        corrupt[data.draw(st.integers(4, len(valid) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ElfError):
        parse(bytes(corrupt))


# --- the search, on crafted files ----------------------------------------------

def test_a_foreign_rootfs_by_byte_order_and_machine(tmp_path):
    # s390x: 64-bit big-endian. A little-endian x86-64 libc first in the search
    # path is passed over, as ld.so passes over wrong-architecture libraries.
    put(tmp_path, "etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
    put(tmp_path, "etc/ld.so.conf.d/s390x-linux-gnu.conf",
        "/usr/local/lib/s390x-linux-gnu\n/lib/s390x-linux-gnu\n")
    s390x = {"bits": 64, "big_endian": True, "machine": EM_S390}
    # The loader's file name is not its soname, so only the soname says that
    # libc's ld64.so.1 is the loaded PT_INTERP.
    put(tmp_path, "usr/bin/prog", craft_elf(**s390x, interp="/lib/ld64-s390x.so.1",
                                            needed=("libc.so.6", "libm.so.6"),
                                            runpath="/opt/$PLATFORM:/opt/$LIB"))
    link(tmp_path, "lib", "usr/lib")
    put(tmp_path, "usr/lib/s390x-linux-gnu/ld-2.36.so", craft_elf(**s390x, soname="ld64.so.1"))
    link(tmp_path, "usr/lib/ld64-s390x.so.1", "s390x-linux-gnu/ld-2.36.so")
    put(tmp_path, "usr/local/lib/s390x-linux-gnu/libc.so.6", craft_elf(soname="libc.so.6"))
    put(tmp_path, "usr/lib/s390x-linux-gnu/libc.so.6",
        craft_elf(**s390x, soname="libc.so.6", needed=("ld64.so.1", "libm.so.6", "libdl.so.2")))
    put(tmp_path, "opt/lib64/libm.so.6", craft_elf(**s390x))  # through $LIB
    # $PLATFORM is unknown for s390x: ld.so drops "/opt/$PLATFORM", which must
    # not become "/opt/".
    put(tmp_path, "opt/libm.so.6", craft_elf(**s390x))
    tree = DirTree(tmp_path)
    assert needed_closure(tree, "/usr/bin/prog") == Closure(needed=(
        Needed("/lib/ld64-s390x.so.1", "PT_INTERP of /usr/bin/prog"),
        Needed("/lib/s390x-linux-gnu/libc.so.6",
               "DT_NEEDED libc.so.6 of /usr/bin/prog via /etc/ld.so.conf.d/s390x-linux-gnu.conf"),
        Needed("/opt/lib64/libm.so.6",
               "DT_NEEDED libm.so.6 of /usr/bin/prog via DT_RUNPATH of /usr/bin/prog"),
    ), missing=(Missing("libdl.so.2", "DT_NEEDED of /lib/s390x-linux-gnu/libc.so.6"),))
    assert interpreter(tree, "/usr/bin/prog") == "/lib/ld64-s390x.so.1"


def test_32_bit_default_path_and_a_library_loaded_once(tmp_path):
    mips = {"bits": 32, "big_endian": True, "machine": EM_MIPS}
    put(tmp_path, "bin/prog", craft_elf(**mips, interp="/lib/ld.so.1",
                                        needed=("liba.so", "libb.so", "libc.so")))
    put(tmp_path, "lib/ld.so.1", craft_elf(**mips))
    put(tmp_path, "usr/lib/liba.so", craft_elf(**mips, needed=("libbee.so",)))
    # libbee is another name of the file libb is: ld.so knows the file by its
    # identity and loads it once.
    put(tmp_path, "usr/lib/libb.so.1", craft_elf(**mips, soname="libb.so.1"))
    link(tmp_path, "usr/lib/libbee.so", "libb.so.1")
    link(tmp_path, "lib/libb.so", "../usr/lib/libb.so.1")
    put(tmp_path, "lib64/libc.so", craft_elf(**mips))  # 64-bit only: not searched
    tree = DirTree(tmp_path)  # no ld.so.conf at all
    assert needed_closure(tree, "/bin/prog") == Closure(needed=(
        Needed("/lib/ld.so.1", "PT_INTERP of /bin/prog"),
        Needed("/usr/lib/liba.so", "DT_NEEDED liba.so of /bin/prog via the default path"),
        Needed("/lib/libb.so", "DT_NEEDED libb.so of /bin/prog via the default path"),
    ), missing=(Missing("libc.so", "DT_NEEDED of /bin/prog"),))


def test_a_needed_path_with_origin_and_a_library_needing_itself(tmp_path):
    put(tmp_path, "opt/x/bin/prog", craft_elf(needed=("$ORIGIN/../lib/libx.so", "liby.so")))
    link(tmp_path, "usr/bin/prog", "/opt/x/bin/prog")
    put(tmp_path, "opt/x/lib/libx.so", craft_elf(needed=("libx.so",), soname="libx.so",
                                                runpath="$ORIGIN"))
    put(tmp_path, "usr/lib64/liby.so", craft_elf(needed=("/usr/lib64/liby.so",)))
    tree = DirTree(tmp_path)
    # $ORIGIN of the program is where the link leads, as /proc/self/exe says.
    assert needed_closure(tree, "/usr/bin/prog").needed == (
        Needed("/opt/x/bin/../lib/libx.so",
               "DT_NEEDED $ORIGIN/../lib/libx.so of /usr/bin/prog via its path"),
        Needed("/usr/lib64/liby.so", "DT_NEEDED liby.so of /usr/bin/prog via the default path"),
    )
    assert interpreter(tree, "/usr/bin/prog") is None  # static, or a library


def test_runpath_ends_the_rpath_of_loaders(tmp_path):
    put(tmp_path, "bin/prog", craft_elf(needed=("liba.so", "libc.so"), rpath="/r"))
    put(tmp_path, "r/liba.so", craft_elf(needed=("libb.so",), runpath="/nowhere"))
    put(tmp_path, "r/libc.so", craft_elf(needed=("libd.so",)))
    for name in ("libb.so", "libd.so"):
        put(tmp_path, f"r/{name}", craft_elf())
        put(tmp_path, f"usr/lib64/{name}", craft_elf())
    assert needed_closure(DirTree(tmp_path), "/bin/prog").needed == (
        Needed("/r/liba.so", "DT_NEEDED liba.so of /bin/prog via DT_RPATH of /bin/prog"),
        Needed("/r/libc.so", "DT_NEEDED libc.so of /bin/prog via DT_RPATH of /bin/prog"),
        Needed("/usr/lib64/libb.so", "DT_NEEDED libb.so of /r/liba.so via the default path"),
        Needed("/r/libd.so", "DT_NEEDED libd.so of /r/libc.so via DT_RPATH of /bin/prog"),
    )


def test_ld_so_conf_includes(tmp_path):
    put(tmp_path, "etc/ld.so.conf", "# glibc's\ninclude ld.so.conf.d/*.conf  other/*.conf\n"
        "/usr/lib/after  # comment\n")
    put(tmp_path, "etc/ld.so.conf.d/b.conf", "hwcap 0 nosegneg\n/usr/lib/b/\n")
    put(tmp_path, "etc/ld.so.conf.d/a.conf", "\n/usr/lib/a\ninclude /etc/ld.so.conf\n")
    put(tmp_path, "etc/ld.so.conf.d/.hidden.conf", "/usr/lib/hidden\n")
    put(tmp_path, "etc/ld.so.conf.d/notes.txt", "/usr/lib/notes\n")
    put(tmp_path, "etc/ld.so.conf.d/dir.conf/x", "")  # a directory matches, and is no file
    put(tmp_path, "srv/other/c.conf", "relative/lib\n/usr/lib/c\n")
    link(tmp_path, "etc/other", "/srv/other")
    names = ("a", "b", "c", "after", "hidden", "notes")
    for name in names:
        put(tmp_path, f"usr/lib/{name}/lib{name}.so", craft_elf())
        put(tmp_path, f"usr/lib/{name}/libeverywhere.so", craft_elf())
    put(tmp_path, "bin/prog", craft_elf(needed=(
        "libeverywhere.so", *(f"lib{name}.so" for name in names))))
    closure = needed_closure(DirTree(tmp_path), "/bin/prog")
    assert [(needed.path, needed.why.rsplit(" ", 1)[1]) for needed in closure.needed] == [
        ("/usr/lib/a/libeverywhere.so", "/etc/ld.so.conf.d/a.conf"),  # glob results sorted
        ("/usr/lib/a/liba.so", "/etc/ld.so.conf.d/a.conf"),
        ("/usr/lib/b/libb.so", "/etc/ld.so.conf.d/b.conf"),
        ("/usr/lib/c/libc.so", "/etc/other/c.conf"),
        ("/usr/lib/after/libafter.so", "/etc/ld.so.conf"),
    ]
    assert [missing.name for missing in closure.missing] == ["libhidden.so", "libnotes.so"]


def test_scripts_bring_their_interpreters(tmp_path):
    put(tmp_path, "usr/bin/interp", craft_elf(interp="/lib64/ld.so", needed=("libi.so",)))
    put(tmp_path, "lib64/ld.so", craft_elf())
    put(tmp_path, "lib64/libi.so", craft_elf())
    put(tmp_path, "usr/bin/inner", "#!/usr/bin/interp -x\n")
    put(tmp_path, "usr/bin/outer", "#! /usr/bin/inner\n")
    put(tmp_path, "usr/bin/broken", "#!/usr/bin/nowhere\n")
    put(tmp_path, "usr/bin/loop", "#!/usr/bin/loop\n")
    put(tmp_path, "usr/bin/text", "just text\n")
    put(tmp_path, "usr/bin/short", b"\x7fELF")
    tree = DirTree(tmp_path)
    assert needed_closure(tree, "/usr/bin/outer").needed == (
        Needed("/usr/bin/inner", "#! interpreter of /usr/bin/outer"),
        Needed("/usr/bin/interp", "#! interpreter of /usr/bin/inner"),
        Needed("/lib64/ld.so", "PT_INTERP of /usr/bin/interp"),
        Needed("/lib64/libi.so", "DT_NEEDED libi.so of /usr/bin/interp via the default path"),
    )
    assert interpreter(tree, "/usr/bin/outer") == "/usr/bin/inner"
    assert needed_closure(tree, "/usr/bin/broken") == Closure(
        (), (Missing("/usr/bin/nowhere", "#! interpreter of /usr/bin/broken"),))
    assert needed_closure(tree, "/usr/bin/text") == Closure((), ())
    assert interpreter(tree, "/usr/bin/text") is None
    assert interpreter(tree, "/usr/bin/nowhere") is None
    with pytest.raises(RootfsError, match="nest more than 5 deep"):
        needed_closure(tree, "/usr/bin/loop")
    with pytest.raises(RootfsError, match="/usr/bin/nowhere is not a file"):
        needed_closure(tree, "/usr/bin/nowhere")
    with pytest.raises(RootfsError, match="/usr/bin is not a file"):
        needed_closure(tree, "/usr/bin")
    with pytest.raises(ElfError, match="malformed ELF /usr/bin/short"):
        needed_closure(tree, "/usr/bin/short")
    with pytest.raises(ElfError, match="malformed ELF /usr/bin/short"):
        interpreter(tree, "/usr/bin/short")


def test_several_programs_share_what_they_need(tmp_path):
    put(tmp_path, "lib64/ld.so", craft_elf(soname="ld.so"))
    put(tmp_path, "lib64/libc.so", craft_elf(needed=("ld.so",)))
    put(tmp_path, "bin/a", craft_elf(interp="/lib64/ld.so", needed=("libc.so",)))
    put(tmp_path, "bin/b", craft_elf(interp="/lib64/ld.so", needed=("libc.so", "libb.so")))
    closure = needed_closure(DirTree(tmp_path), "/bin/a", "/bin/b")
    assert [needed.path for needed in closure.needed] == ["/lib64/ld.so", "/lib64/libc.so"]
    assert closure.missing == (Missing("libb.so", "DT_NEEDED of /bin/b"),)


# --- real files, built here by gcc ---------------------------------------------

@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """A rootfs of programs and libraries gcc links here: RUNPATH and RPATH, $ORIGIN,
    $LIB and $PLATFORM, and a 32-bit libfoo first in the search path."""
    build, root = tmp_path_factory.mktemp("build"), tmp_path_factory.mktemp("compiled")

    def cc(source: str, output: str, *flags: str, bits: int = 64) -> None:
        (build / "source.c").write_text(source)
        target = root / output
        target.parent.mkdir(parents=True, exist_ok=True)
        # -nostdlib: nothing but what each test names, not the host's libc.
        subprocess.run(["gcc", f"-m{bits}", "-nostdlib", "-fPIC", "-o", target,
                        build / "source.c", *flags], check=True, capture_output=True)

    lib = root / "opt/app/lib"
    cc("int bar(void) { return 2; }", "opt/app/lib/libbar.so.1",
       "-shared", "-Wl,-soname,libbar.so.1")
    cc("int bar(void); int foo(void) { return bar(); }", "opt/app/lib/libfoo.so.1",
       "-shared", "-Wl,-soname,libfoo.so.1", f"{lib}/libbar.so.1")
    cc("int foo(void) { return 1; }", "opt/app/lib32/libfoo.so.1",
       "-shared", "-Wl,-soname,libfoo.so.1", bits=32)
    program = ("int foo(void); int main(void) { return foo(); }", "-Wl,-e,main",
               f"{lib}/libfoo.so.1", f"-Wl,-rpath-link,{lib}")
    cc(program[0], "opt/app/bin/prog-runpath", *program[1:], "-Wl,--enable-new-dtags",
       "-Wl,-rpath,$ORIGIN/../lib32:$ORIGIN/../lib")
    cc(program[0], "opt/app/bin/prog-rpath", *program[1:], "-Wl,--disable-new-dtags",
       "-Wl,-rpath,$ORIGIN/../lib32:$ORIGIN/../lib")
    cc(program[0], "opt/app/bin/prog-dst", *program[1:], "-Wl,--enable-new-dtags",
       "-Wl,-rpath,/opt/${LIB}/$PLATFORM")
    (root / "opt/lib64/x86_64").mkdir(parents=True)
    os.link(lib / "libfoo.so.1", root / "opt/lib64/x86_64/libfoo.so.1")
    put(root, "usr/local/lib/multi/libbar.so.1", (lib / "libbar.so.1").read_bytes())
    put(root, "etc/ld.so.conf", "include ld.so.conf.d/*.conf\n")
    put(root, "etc/ld.so.conf.d/multi.conf", "/usr/local/lib/multi\n")
    put(root, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        craft_elf(soname="ld-linux-x86-64.so.2"))
    link(root, "lib64", "usr/lib/x86_64-linux-gnu")
    link(root, "usr/bin/app", "/opt/app/bin/prog-runpath")
    return root


def test_gcc_built_files_parse(compiled):
    tree = DirTree(compiled)
    assert interpreter(tree, "/opt/app/bin/prog-rpath") == "/lib64/ld-linux-x86-64.so.2"
    with open(compiled / "opt/app/lib32/libfoo.so.1", "rb") as stream:
        lib32 = parse_elf(stream, os.fstat(stream.fileno()).st_size, "/libfoo")
    assert lib32 == Elf(Kind(1, 1, EM_386), None, (), "libfoo.so.1", None, None)


LIBFOO = "/opt/app/bin/../lib/libfoo.so.1"
INTERP = "/lib64/ld-linux-x86-64.so.2"


def test_runpath_serves_only_the_object_that_has_it(compiled):
    # libfoo has no search path of its own: its libbar comes from ld.so.conf.
    assert needed_closure(DirTree(compiled), "/opt/app/bin/prog-runpath") == Closure((
        Needed(INTERP, "PT_INTERP of /opt/app/bin/prog-runpath"),
        Needed(LIBFOO, "DT_NEEDED libfoo.so.1 of /opt/app/bin/prog-runpath "
               "via DT_RUNPATH of /opt/app/bin/prog-runpath"),
        Needed("/usr/local/lib/multi/libbar.so.1", f"DT_NEEDED libbar.so.1 of {LIBFOO} "
               "via /etc/ld.so.conf.d/multi.conf"),
    ), ())


def test_rpath_serves_what_its_object_loads_too(compiled):
    assert needed_closure(DirTree(compiled), "/opt/app/bin/prog-rpath") == Closure((
        Needed(INTERP, "PT_INTERP of /opt/app/bin/prog-rpath"),
        Needed(LIBFOO, "DT_NEEDED libfoo.so.1 of /opt/app/bin/prog-rpath "
               "via DT_RPATH of /opt/app/bin/prog-rpath"),
        Needed("/opt/app/bin/../lib/libbar.so.1", f"DT_NEEDED libbar.so.1 of {LIBFOO} "
               "via DT_RPATH of /opt/app/bin/prog-rpath"),
    ), ())


def test_origin_is_where_the_program_really_is_and_lib_platform_expand(compiled):
    tree = DirTree(compiled)
    assert [needed.path for needed in needed_closure(tree, "/usr/bin/app").needed] == [
        INTERP, LIBFOO, "/usr/local/lib/multi/libbar.so.1"]
    assert needed_closure(tree, "/opt/app/bin/prog-dst").needed[1] == Needed(
        "/opt/lib64/x86_64/libfoo.so.1", "DT_NEEDED libfoo.so.1 of /opt/app/bin/prog-dst "
        "via DT_RUNPATH of /opt/app/bin/prog-dst")


@pytest.mark.parametrize("compress", [False, True])
def test_tar_rootfs_gives_the_same_closure(compiled, tmp_path, compress):
    tar = make_tar(compiled, tmp_path / "rootfs.tar")
    if compress:  # a streamed tar: the data comes through prefetch
        subprocess.run(["zstd", "-q", "--rm", tar, "-o", tmp_path / "rootfs.tar.zst"],
                       check=True)
        tar = tmp_path / "rootfs.tar.zst"
    programs = ("/usr/bin/app", "/opt/app/bin/prog-rpath", "/opt/app/bin/prog-dst")
    tree = TarTree(tar)
    try:
        assert needed_closure(tree, *programs) == needed_closure(DirTree(compiled), *programs)
    finally:
        tree.close()


# --- the real bookworm rootfs ----------------------------------------------------

LIBDIR = "usr/lib/x86_64-linux-gnu"
MULTIARCH = "via /etc/ld.so.conf.d/x86_64-linux-gnu.conf"


@pytest.fixture(params=["dir", "tar"])
def bookworm(request):
    if request.param == "dir":
        yield DirTree(request.getfixturevalue("rootfs_dir"))
        return
    tree = TarTree(request.getfixturevalue("rootfs_tar"))
    yield tree
    tree.close()


def test_ls_from_bookworm(bookworm):
    closure = needed_closure(bookworm, "/usr/bin/ls")
    assert closure == Closure((
        Needed("/lib64/ld-linux-x86-64.so.2", "PT_INTERP of /usr/bin/ls"),
        Needed("/lib/x86_64-linux-gnu/libselinux.so.1",
               f"DT_NEEDED libselinux.so.1 of /usr/bin/ls {MULTIARCH}"),
        Needed("/lib/x86_64-linux-gnu/libc.so.6",
               f"DT_NEEDED libc.so.6 of /usr/bin/ls {MULTIARCH}"),
        Needed("/lib/x86_64-linux-gnu/libpcre2-8.so.0", "DT_NEEDED libpcre2-8.so.0 of "
               f"/lib/x86_64-linux-gnu/libselinux.so.1 {MULTIARCH}"),
    ), ())
    # libc's DT_NEEDED ld-linux-x86-64.so.2 is the PT_INTERP, not a second file.
    assert [bookworm.resolve(needed.path).target for needed in closure.needed] == [
        f"{LIBDIR}/ld-linux-x86-64.so.2", f"{LIBDIR}/libselinux.so.1", f"{LIBDIR}/libc.so.6",
        f"{LIBDIR}/libpcre2-8.so.0.11.2"]


def test_bash_and_scripts_from_bookworm(bookworm):
    closure = needed_closure(bookworm, "/bin/bash")
    assert [(needed.path, bookworm.resolve(needed.path).target) for needed in closure.needed] == [
        ("/lib64/ld-linux-x86-64.so.2", f"{LIBDIR}/ld-linux-x86-64.so.2"),
        ("/lib/x86_64-linux-gnu/libtinfo.so.6", f"{LIBDIR}/libtinfo.so.6.4"),
        ("/lib/x86_64-linux-gnu/libc.so.6", f"{LIBDIR}/libc.so.6")]
    assert closure.missing == ()
    assert interpreter(bookworm, "/usr/bin/zgrep") == "/bin/sh"
    assert [needed.path for needed in needed_closure(bookworm, "/usr/bin/zgrep").needed] == [
        "/bin/sh", "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"]
    assert interpreter(bookworm, "/usr/sbin/ldconfig") is None  # static
    assert needed_closure(bookworm, "/usr/sbin/ldconfig") == Closure((), ())
