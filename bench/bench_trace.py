"""Tracing overhead, timed inside the session itself, for each tracer nbic has
(none, the default, fanotify alone, ptrace, both) on two workloads:

* file-heavy: read 5000 files and walk /usr/share, three times (bookworm);
* python-import: start CPython and import 40 standard library modules, ten
  times (bookworm + python3, tests/python-image).

The default tracer is fanotify plus the inotify device watch and the lookup
rules (nbic.implied), which cost nothing during the session. For the record,
one alternative that was weighed is measured too: strace with --seccomp-bpf
(ptrace stops only on the traced calls), run straight in the builder image.
"""

from __future__ import annotations

import re
import subprocess

from common import NBIC, REPO, ROOTFS_TAR, Result, workdir
from timing import best_of, run, show

TIMED = """t0=$(date +%s.%N)
{body}
t1=$(date +%s.%N)
echo "NBIC_BENCH_T0=$t0 NBIC_BENCH_T1=$t1"
"""
FILE_HEAVY = """for i in 1 2 3; do
    find / -xdev -type f -print0 2>/dev/null | head -z -n 5000 | xargs -0 cat > /dev/null
    ls -R /usr/share > /dev/null
done"""
MODULES = ("json sqlite3 ssl email.parser http.client xml.etree.ElementTree asyncio decimal "
           "zoneinfo hashlib argparse logging subprocess tempfile shutil pathlib csv "
           "urllib.request unittest typing dataclasses enum functools itertools collections "
           "statistics fractions random string textwrap datetime calendar pprint copy "
           "pickle base64 gzip zipfile tarfile configparser socket selectors")
PYTHON_IMPORT = f"""for i in 1 2 3 4 5 6 7 8 9 10; do
    python3 -c 'import importlib, sys
for name in sys.argv[1:]: importlib.import_module(name)' {MODULES}
done"""
PYTHON_IMAGE = "nbic-bench-python:latest"
TRACERS = ("none", "auto", "fanotify", "ptrace", "both")


def _script(name: str, body: str) -> str:
    path = workdir(f"{name}.sh")
    with open(path, "w") as script:
        script.write("#!/bin/sh\n" + TIMED.format(body=body))
    return path


def _command(rootfs: str, script: str, tracer: str) -> list[str]:
    return [NBIC, "run", "--rootfs", rootfs, "--script", script,
            "-o", workdir(f"trace-{tracer}.cpio"), "--init", "/usr/bin/true",
            "--tracer", tracer]


def _seconds(output: str) -> float:
    found = re.search(r"NBIC_BENCH_T0=([\d.]+) NBIC_BENCH_T1=([\d.]+)", output)
    if found is None:
        raise RuntimeError(f"no timing line in the session's output:\n{output[-2000:]}")
    return float(found.group(2)) - float(found.group(1))


def _python_rootfs() -> str:
    subprocess.run(["docker", "build", "-q", "-t", PYTHON_IMAGE, f"{REPO}/tests/python-image"],
                   check=True, capture_output=True)
    return f"docker:{PYTHON_IMAGE}"


def _seccomp_bpf_strace(script: str, n: int) -> tuple[float, float]:
    """(untraced, traced) in-container seconds of the script under plain Docker,
    with and without `strace -f --seccomp-bpf -e trace=%file`."""
    base = ["docker", "run", "--rm", "--cap-add", "SYS_PTRACE", "-v",
            f"{script}:/w.sh:ro", _builder_tag()]
    plain = best_of(lambda: _seconds(run([*base, "sh", "/w.sh"], capture=True)), n)
    traced = best_of(lambda: _seconds(run([*base, "strace", "-f", "-qq", "--seccomp-bpf",
                                           "-e", "trace=%file", "-o", "/dev/null", "sh",
                                           "/w.sh"], capture=True)), n)
    return traced.best, plain.best


def _builder_tag() -> str:
    from nbic import engine

    return engine.builder_tag()


def bench(n: int = 3) -> list[Result]:
    results = []
    workloads = (("file-heavy", ROOTFS_TAR, _script("file-heavy", FILE_HEAVY)),
                 ("python-import", _python_rootfs(), _script("python-import", PYTHON_IMPORT)))
    for label, rootfs, script in workloads:
        run(_command(rootfs, script, "none"))  # warm-up: builder image, volume, page cache
        samples = {tracer: best_of(lambda t=tracer, r=rootfs, s=script: _seconds(run(
            _command(r, s, t), capture=True)), n) for tracer in TRACERS}
        base = samples["none"]
        notes = [f"in-session seconds, best of {n}: "
                 + "; ".join(f"{t} {s}" for t, s in samples.items())]
        for tracer in TRACERS[1:]:
            target = 1.25 if (label, tracer) == ("file-heavy", "auto") else None
            results.append(Result(
                f"tracing {label}: {'default' if tracer == 'auto' else tracer} vs untraced",
                samples[tracer].best, base.best, target=target,
                nbic_cmd=show(_command(rootfs, script, tracer)),
                peer_cmd=show(_command(rootfs, script, "none")), notes=notes))
        traced, plain = _seccomp_bpf_strace(script, n)
        results.append(Result(
            f"tracing {label}: strace --seccomp-bpf (weighed, not used) vs untraced",
            traced, plain, notes=["in the builder image under plain `docker run`, "
                                  "in-container seconds"]))
    return results
