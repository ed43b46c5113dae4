"""Recipes and locks without an engine: the recipe format (every key, strict
errors naming the file and the key), the one selection model shared with the
command line, lock files (format, round trip, comparison, what a locked rebuild
lists) and the committed locks of the shipped recipes."""

import argparse
import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest
from rootfs_factory import make_rootfs

from nbic import lock, serial
from nbic import recipe as recipes
from nbic import selection as selections
from nbic.agent.protocol import EntryOrigin, Tracer
from nbic.cpio.compress import Compression, CompressionSpec
from nbic.cpio.entry import FileType
from nbic.cpio.image import read_entries
from nbic.cpio.spec import parse_spec
from nbic.devices import DeviceNode
from nbic.errors import RecipeError, UsageError
from nbic.lock import LockedEntry
from nbic.pack import PackConfig, pack
from nbic.selection import InitMode, Selection, Verify
from nbic.serial import DecodeError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("bash", "python", "rescue", "node")


def write_recipe(directory: Path, text: str, script: str = "#!/bin/sh\ntrue\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recipe.toml").write_text(textwrap.dedent(text))
    (directory / "session.sh").write_text(script)
    return directory


def test_every_key_of_a_recipe(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    directory = write_recipe(tmp_path / "demo", """
        rootfs = "debootstrap:bookworm"
        script = "session.sh"
        check = "check.sh"
        verify = "fix"
        tracer = "ptrace"
        compress = "xz:6"
        suffix = ".img"
        epoch = 1700000000

        [selection]
        files-from = ["extra.list"]
        spec = ["extra.spec"]
        include = ["/etc/ssl/*"]
        exclude = ["/usr/share/doc/*"]
        include-bin = ["/usr/bin/ls"]
        dev = ["zero", "/dev/vdb:b:253:16:0600"]
        init = "/usr/bin/bash"
        strict = true

        [boot]
        expect = ["READY", "DONE"]
        append = "quiet"
        memory = 256
        timeout = 90
        kernel = "vmlinux"
        """)
    (directory / "check.sh").write_text("#!/bin/sh\n")
    (directory / "extra.list").write_text("/etc/hostname\n")
    (directory / "greeting").write_text("hi\n")
    (directory / "extra.spec").write_text("file /etc/greeting greeting 0644 0 0\n")
    loaded = recipes.load(directory)
    recipe = loaded.recipe
    assert (loaded.name, loaded.image_name) == ("demo", "demo.img")
    assert (loaded.script, loaded.check) == (directory / "session.sh", directory / "check.sh")
    assert (recipe.verify, recipe.tracer, loaded.epoch) == (Verify.FIX, Tracer.PTRACE,
                                                            1700000000)
    assert loaded.compression() == CompressionSpec(Compression.XZ, 6)
    assert str(loaded.rootfs_source()) == "debootstrap:bookworm"
    assert recipe.boot == recipes.BootCheck(expect=("READY", "DONE"), append="quiet",
                                            memory=256, timeout=90.0, kernel="vmlinux")
    selection = loaded.selection()
    assert selection.file_lists[0].name == "extra.list"
    assert selection.file_lists[0].paths == ("/etc/hostname",)
    # Spec list locations are found from the recipe's directory.
    assert selection.spec_lists[0].items[0].location == str(directory / "greeting")
    assert selection.include == ("/etc/ssl/*",) and selection.exclude == ("/usr/share/doc/*",)
    assert selection.binaries == ("/usr/bin/ls",)
    assert selection.devices[1] == DeviceNode("dev/vdb", FileType.BLOCK, 253, 16, 0o600)
    assert (selection.init_mode, selection.init_path) == (InitMode.PATH, "/usr/bin/bash")
    assert selection.strict and selection.verify is Verify.FIX
    assert selection.epoch == 1700000000


def test_the_defaults_of_a_minimal_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    loaded = recipes.load(write_recipe(tmp_path / "min", 'script = "session.sh"\n'))
    assert loaded.image_name == "min.cpio.zst"
    # The default level, spelled out (a lock must not change with a default).
    assert loaded.compression() == CompressionSpec(Compression.ZSTD, 9)
    assert loaded.check == loaded.script
    assert loaded.epoch == 1234  # no epoch in the recipe: SOURCE_DATE_EPOCH
    assert loaded.recipe.verify is Verify.CHECK and loaded.recipe.boot.kernel is None
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert loaded.epoch == 0  # ... else 0: a build is always reproducible


@pytest.mark.parametrize(("text", "key"), [
    ('script = "session.sh"\nscirpt = "x"\n', "scirpt"),
    ('script = "session.sh"\n[boot]\nexpekt = ["x"]\n', "boot.expekt"),
    ('script = "session.sh"\n[selection]\ninclude_bin = ["/x"]\n', "selection.include_bin"),
    ('script = "session.sh"\n[nonsense]\n', "nonsense"),
])
def test_an_unknown_key_is_an_error_naming_the_key_and_the_file(tmp_path, text, key):
    directory = write_recipe(tmp_path / "bad", text)
    with pytest.raises(RecipeError) as error:
        recipes.load(directory)
    message = str(error.value)
    assert str(directory / "recipe.toml") in message and f"{key}: unknown key" in message


@pytest.mark.parametrize(("text", "expected"), [
    ('script = "session.sh"\n[boot]\nmemory = "lots"\n', "boot.memory: must be an integer"),
    ('script = "session.sh"\n[boot]\nexpect = "READY"\n', "boot.expect: must be a list"),
    ('script = "session.sh"\nverify = "maybe"\n', "verify: 'maybe' is not one of"),
    ('script = "session.sh"\n[selection]\nexclude = "/x"\n',
     "selection.exclude: must be a list of strings"),
    ('script = "session.sh"\n[selection]\nstrict = "yes"\n',
     "selection.strict: must be true or false"),
    ('script = "session.sh"\ncompress = "brotli"\n', "compress: unknown compression"),
    ('script = "session.sh"\nsuffix = "x/y"\n', "suffix"),
    ('script = "missing.sh"\n', "script:"),
    ('command = ["true"]\n', "give check = FILE"),
    ('script = "session.sh"\ncommand = ["true"]\n', "one of them"),
    ('script = "session.sh"\n[selection]\nfiles-from = ["gone.list"]\n',
     "cannot read file list gone.list"),
    ('script = "session.sh"\nrootfs = [1]\n', "rootfs: must be a string"),
    ('script = "session.sh"\nepoch = "now"\n', "epoch: must be an integer"),
    ('script = "session.sh"\n[boot\n', "recipe.toml"),
])
def test_a_malformed_recipe_is_an_error_saying_where(tmp_path, text, expected):
    with pytest.raises(UsageError) as error:
        recipes.load(write_recipe(tmp_path / "bad", text))
    assert expected in str(error.value)


def test_recipe_selection_keys_are_the_command_line_options(tmp_path, monkeypatch):
    """One definition: the same names and values give the same Selection."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    (tmp_path / "a.list").write_text("/etc/hostname\n")
    values = {"files-from": [str(tmp_path / "a.list")], "include": ["/etc/*"],
              "exclude": ["/etc/shadow"], "include-bin": ["/usr/bin/ls"], "dev": ["ttyS0"],
              "modules": ["loop", "drivers/block/*"], "kernel-release": "6.1.0-50-amd64",
              "init": "none", "strict": True}
    parser = argparse.ArgumentParser()
    selections.add_arguments(parser)
    argv = [f"--{name}={item}" for name, value in values.items() if name != "strict"
            for item in (value if isinstance(value, list) else [value])] + ["--strict"]
    from_cli = selections.from_args(parser.parse_args(argv))
    from_recipe = selections.from_mapping(values, epoch=0)
    assert from_cli == from_recipe
    assert {option.name for option in selections.OPTIONS} == {
        "files-from", "spec", "include", "exclude", "include-bin", "dev", "modules",
        "kernel-release", "init", "strict"}


def test_find_recipes(tmp_path):
    for name in ("zeta", "alpha"):
        write_recipe(tmp_path / "images" / name, 'script = "session.sh"\n')
    (tmp_path / "images" / "not-a-recipe").mkdir()
    assert recipes.find(tmp_path / "images") == [tmp_path / "images/alpha",
                                                  tmp_path / "images/zeta"]
    assert recipes.find(tmp_path / "images/zeta") == [tmp_path / "images/zeta"]
    with pytest.raises(RecipeError, match=r"no recipe\.toml"):
        recipes.find(tmp_path / "images/not-a-recipe")


def test_strict_decoding_names_missing_keys():
    with pytest.raises(DecodeError, match=r"^entries\[1\]\.mode: missing$"):
        serial.from_data(lock.Lock, {**_lock_data(), "entries": [
            {"path": "/a", "type": "dir", "mode": "0755"}, {"path": "/b", "type": "dir"}]},
            strict=True)


# --- locks -------------------------------------------------------------------------

def _entry(path, kind="file", origin=EntryOrigin.ROOTFS, **fields):
    defaults = {"file": {"mode": "0644", "size": 3, "sha256": "ab" * 32},
                "dir": {"mode": "0755"}, "symlink": {"mode": "0777", "target": "x"},
                "char": {"mode": "0600", "rdev": "1:5"}}[kind]
    return LockedEntry(path=path, type=kind, origin=origin, **{**defaults, **fields})


def _lock(entries=(), selection=None) -> lock.Lock:
    return lock.Lock(
        nbic="0.1.0", recipe="demo", rootfs=lock.LockedRootfs("debootstrap:bookworm", "f" * 64),
        selection=selection or Selection(epoch=0, verify=Verify.CHECK),
        compression=CompressionSpec(Compression.ZSTD, 19),
        image=lock.LockedImage("demo.cpio.zst", "e" * 64, 1234), entries=tuple(entries))


def _lock_data():
    return json.loads(lock.dumps(_lock()))


def test_a_lock_is_sorted_json_with_one_entry_per_line(tmp_path):
    locked = _lock([_entry("/etc", "dir"), _entry("/etc/hostname"),
                    _entry("/init", origin=EntryOrigin.NBIC)])
    text = lock.dumps(locked)
    lines = text.splitlines()
    entry_lines = [line for line in lines if '"path": ' in line]
    assert len(entry_lines) == 3 and all(line.startswith("  {") for line in entry_lines)
    assert "null" not in text  # left out: their defaults
    keys = [line.split('"')[1] for line in lines if line.startswith(' "')]
    assert keys == sorted(keys)
    path = tmp_path / "nbic.lock"
    assert lock.write(path, locked) and not lock.write(path, locked)  # unchanged: not rewritten
    assert lock.load(path) == locked
    assert [item.origin for item in lock.load(path).entries] == [
        EntryOrigin.ROOTFS, EntryOrigin.ROOTFS, EntryOrigin.NBIC]


def test_a_damaged_lock_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "nbic.lock"
    data = _lock_data()
    data["image"]["sha265"] = data["image"].pop("sha256")
    path.write_text(json.dumps(data))
    with pytest.raises(RecipeError, match=r"image\.sha265: unknown key"):
        lock.load(path)
    path.write_text("{")
    with pytest.raises(RecipeError, match="not a lock"):
        lock.load(path)
    with pytest.raises(RecipeError, match="build once without --locked"):
        lock.load(tmp_path / "missing.lock")


def test_differences_name_each_path_and_what_changed():
    locked = (_entry("/a"), _entry("/b", mode="0755"), _entry("/c"),
              _entry("/w", origin=EntryOrigin.SESSION))
    rebuilt = (_entry("/a"), _entry("/b", mode="0644", sha256="cd" * 32), _entry("/d"))
    assert lock.differences(locked, rebuilt) == [
        "/b: mode 0755 -> 0644, different content (sha256)",
        "/c: missing (the rootfs no longer gives it)",
        "/d: not in the lock (new in the rootfs)",
        "/w: missing (the session wrote it: a rebuild without a session cannot)"]
    # The origin is not part of what an entry is.
    assert lock.differences((_entry("/a"),), (_entry("/a", origin=EntryOrigin.NBIC),)) == []


def test_a_locked_rebuild_lists_the_rootfs_entries_and_makes_the_rest(tmp_path):
    (tmp_path / "recipe").mkdir()
    spec_location = tmp_path / "recipe/greeting"
    spec_location.write_text("hi\n")
    spec = selections.SpecList("extra.spec", tuple(parse_spec(
        f"file /etc/greeting {spec_location} 0644 0 0\n")))
    selection = lock.portable(Selection(spec_lists=(spec,), strict=True, verify=Verify.FIX,
                                        epoch=5), tmp_path / "recipe")
    assert selection.spec_lists[0].items[0].location == "greeting"  # portable
    locked = _lock([
        _entry("/usr/bin/python3.11"), _entry("/dev/zero", "char", EntryOrigin.ROOTFS),
        _entry("/dev/urandom", "char", EntryOrigin.NBIC, rdev="1:9", mode="0666"),
        _entry("/etc/greeting", origin=EntryOrigin.NBIC),
        _entry("/tmp/state", origin=EntryOrigin.SESSION),
        _entry("/init", "symlink", EntryOrigin.NBIC, target="/usr/bin/python3.11")],
        selection=selection)
    rebuild = lock.rebuild_selection(locked, tmp_path / "recipe")
    assert rebuild.file_lists[-1].paths == ("/usr/bin/python3.11", "/dev/zero")
    assert rebuild.devices == (DeviceNode("dev/urandom", FileType.CHAR, 1, 9, 0o666),)
    assert rebuild.spec_lists[0].items[0].location == str(spec_location)
    # A session's program as /init comes back as --init of its target.
    assert (rebuild.init_mode, rebuild.init_path) == (InitMode.PATH, "/usr/bin/python3.11")
    assert (rebuild.strict, rebuild.verify, rebuild.epoch) == (False, Verify.OFF, 5)


def test_image_entries_give_every_name_of_a_hardlinked_file_its_digest(tmp_path):
    rootfs = make_rootfs(tmp_path / "rootfs")
    image = tmp_path / "img.cpio"
    selection = Selection(file_lists=(selections.FileList("l", ("/usr/bin/perl",
                                                                 "/etc/hostname")),),
                          init_mode=InitMode.NONE)
    pack(PackConfig(str(image), str(rootfs), selection, CompressionSpec(Compression.NONE)))
    origins = {entry.path: EntryOrigin.ROOTFS for entry in read_entries(image)}
    entries = {item.path: item for item in lock.image_entries(image, origins)}
    perl, alias = entries["/usr/bin/perl"], entries["/usr/bin/perl5.36.0"]
    digest = hashlib.sha256(b"\x7fELF perl").hexdigest()
    assert perl.sha256 == alias.sha256 == digest
    assert (perl.size, perl.links, perl.mode) == (9, 2, "0755")
    assert entries["/etc/hostname"].links is None
    assert entries["/usr"].type == "dir" and entries["/usr"].sha256 is None


@pytest.mark.parametrize("name", SHIPPED)
def test_the_committed_locks_match_their_recipes(name):
    """A recipe changed without building it again leaves a stale lock."""
    loaded = recipes.load(REPO / "images" / name)
    locked = lock.load(loaded.lock_file)
    assert serial.to_data(lock.portable(loaded.selection(), loaded.directory)) == \
        serial.to_data(locked.selection)
    assert locked.rootfs.source == loaded.recipe.rootfs
    assert locked.compression == loaded.compression()
    assert locked.image.file == loaded.image_name
    # /init is the session's script, or the recipe's own init that its rootfs
    # holds (node: the Dockerfile copies it in; the session only exercises it).
    init = next(item for item in locked.entries if item.path == "/init")
    own = loaded.directory / "init"
    assert init.sha256 == lock.sha256_file(own if own.is_file() else loaded.script)
    assert not lock.session_written(locked.entries)
    assert os.path.relpath(loaded.lock_file, REPO) == f"images/{name}/nbic.lock"
    if name == "bash":
        assert locked.image.bytes <= 1_800_000  # the bound: at most 1.8 MB

