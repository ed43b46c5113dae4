"""The strace log reader and the exec completion, on logs and files made here."""

import shutil

from rootfs_factory import LIBDIR, make_rootfs

from nbic.agent.strace import complete, parse
from nbic.tree import DirTree

LOG = r'''100 execve("/usr/sbin/chroot", ["chroot", "/rootfs", "ls"], 0x7ffe /* 5 vars */) = 0
100 openat(AT_FDCWD</>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>
100 chroot("/rootfs") = 0
100 chdir("/") = 0
100 execve("/bin/bash", ["bash"], 0x55 /* 5 vars */) = 0
100 openat(AT_FDCWD</rootfs>, "/lib/x86_64-linux-gnu/libtinfo.so.6", O_RDONLY|O_CLOEXEC) = 3</rootfs/usr/lib/x86_64-linux-gnu/libtinfo.so.6.4>
100 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD <unfinished ...>
101 newfstatat(AT_FDCWD</rootfs/etc>, "hostname", {st_mode=S_IFREG|0644, st_size=5, ...}, 0) = 0
100 <... clone resumed>, child_tidptr=0x7f) = 101
100 chdir("etc") = 0
100 stat("passwd", 0x7ff) = -1 ENOENT (No such file or directory)
101 openat(3</rootfs/usr/share>, "caf\303\251", O_RDONLY) = -1 ENOENT (No such file or directory)
101 +++ exited with 0 +++
'''  # noqa: E501 - strace writes long lines


def test_log_paths_are_resolved_per_process_after_chroot():
    trace = parse(LOG.splitlines(), "/rootfs")
    assert "/etc/ld.so.cache" not in trace.used  # looked up before the chroot
    assert {"/bin/bash", "/lib/x86_64-linux-gnu/libtinfo.so.6",
            "/usr/lib/x86_64-linux-gnu/libtinfo.so.6.4", "/etc/hostname"} <= trace.used.keys()
    # Lookups that found nothing are kept apart, with who made them.
    assert trace.failed == {"/etc/passwd": ("stat", "/bin/bash"),
                            "/usr/share/café": ("openat", "/bin/bash")}
    assert trace.used["/lib/x86_64-linux-gnu/libtinfo.so.6"] == ("openat", "/bin/bash")
    assert trace.executed == {"/bin/bash"}


def test_completion_adds_real_files_and_interpreters(tmp_path):
    root = make_rootfs(tmp_path / "rootfs")
    # A real ELF program whose PT_INTERP names the usual loader.
    shutil.copyfile(shutil.which("true"), root / "usr/bin/bash")
    (root / "usr/bin/script").write_text("#!/usr/bin/mawk -f\n")
    (root / "etc/mtab").symlink_to("../proc/self/mounts")
    log = LOG + '100 openat(AT_FDCWD</rootfs>, "/etc/mtab", O_RDONLY) = -1 ENOENT (No such file or directory)\n'  # noqa: E501
    trace = parse(log.splitlines(), "/rootfs")
    trace.executed.add("/usr/bin/script")
    paths = complete(trace, DirTree(root))
    assert "/etc/mtab" in paths  # a dangling symlink is in the rootfs: it goes in
    assert "/usr/bin/bash" in paths  # /bin/bash, resolved
    assert "/lib64/ld-linux-x86-64.so.2" in paths  # bash's ELF interpreter
    assert f"/{LIBDIR}/ld-linux-x86-64.so.2" in paths  # and the file it is
    assert "/usr/bin/mawk" in paths  # the script's #! interpreter



def test_the_main_programs_exit_is_read_from_the_log_as_it_grows(tmp_path):
    from nbic.agent.strace import MainExit

    log = tmp_path / "strace.log"
    ended = MainExit(str(log))
    assert ended() is None  # no log yet
    log.write_text('11    execve("/usr/bin/sh", ["sh"], 0x7f /* 5 vars */) = 0\n'
                   "11    clone(child_stack=NULL, flags=SIGCHLD) = 12\n12    +++ exit")
    assert ended() is None
    with open(log, "a") as more:
        more.write("ed with 0 +++\n11    +++ exited with")  # a child's exit, then half a line
    assert ended() is None
    with open(log, "a") as more:
        more.write(" 3 +++\n")
    assert ended() == 3
    killed = tmp_path / "killed.log"
    killed.write_text("6 +++ exited with 0 +++\n")  # an earlier run's: removed first
    ended = MainExit(str(killed))
    assert not killed.exists()
    killed.write_text('5 execve("/x", ["x"], 0x1) = 0\n5 +++ killed by SIGKILL +++\n')
    assert ended() == 128 + 9
