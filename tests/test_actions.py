"""The GitHub Actions side of nbic: the composite action (action.yml) and the
images workflow (.github/workflows/images.yml).

The workflow runs for real with act (ci/act): its jobs' steps run on this
machine, ci/setup and then the composite action building images/bash, and the
test reads act's JSON log for what each job and step did. Linting the workflow
(actionlint, zizmor) is ci/test's, like ruff.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ACTION_BUILD = REPO / "ci" / "action-build"


def _required(ok: bool, message: str) -> None:
    """Skip on a developer machine, fail under CI: CI never passes by skipping."""
    if ok:
        return
    if os.environ.get("CI") or os.environ.get("NBIC_TEST_DOCKER"):
        pytest.fail(message)
    pytest.skip(message)


def _action_build(tmp_path: Path, **inputs: str) -> tuple[subprocess.CompletedProcess, str]:
    """ci/action-build with these NBIC_* inputs, and what it wrote to GITHUB_OUTPUT."""
    output = tmp_path / "github-output"
    output.touch()
    env = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output), "RUNNER_TEMP": str(tmp_path)}
    env.update({f"NBIC_{name.upper()}": value for name, value in inputs.items()})
    proc = subprocess.run([str(ACTION_BUILD)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    return proc, output.read_text()


@pytest.mark.parametrize(
    ("inputs", "complaint"),
    [
        ({"recipe": ""}, "the recipe input is empty"),
        # A newline would let an input write its own lines into GITHUB_OUTPUT.
        ({"recipe": "images/bash\nsize=1"}, "must be single lines"),
        ({"recipe": "images/bash", "output": "out\rx"}, "must be single lines"),
        ({"recipe": "images/bash", "locked": "yes"}, "the locked input must be true or false"),
    ],
)
def test_action_build_refuses_bad_inputs_before_building(tmp_path, inputs, complaint):
    proc, outputs = _action_build(tmp_path, **inputs)
    assert proc.returncode == 1
    assert proc.stderr.startswith("::error title=nbic-action::")
    assert complaint in proc.stderr
    assert outputs == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.act
def test_act_runs_the_images_workflow_building_bash_through_the_action():
    _required(os.geteuid() == 0, "ci/act runs ci/setup, which needs root")
    _required((REPO / ".venv" / "bin" / "act").is_file(), "no .venv/bin/act (run ci/setup)")
    # Its own session: a timeout ends act and what it started (nbic, QEMU), and
    # nbic removes its containers on SIGTERM.
    proc = subprocess.Popen([str(REPO / "ci" / "act"), "bash", "--", "--json"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=120)
        pytest.fail(f"ci/act ran over 30 minutes:\n{log[-6000:]}")
    assert proc.returncode == 0, log[-6000:]
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]

    results = {(e["jobID"], json.dumps(e.get("matrix") or {})): e["jobResult"]
               for e in events if "jobResult" in e}
    assert results == {
        ("recipes", "{}"): "success",
        ("build", json.dumps({"recipe": "bash"})): "success",
    }
    # The composite action's outputs, as its build step set them.
    outputs = {e["name"]: e["arg"] for e in events
               if e.get("command") == "set-output" and e["jobID"] == "build"}
    assert Path(outputs["image"]).name.startswith("bash.cpio")
    assert outputs["report"] == "out/bash.size.txt"
    assert outputs["report-json"] == "out/bash.size.json"
    assert int(outputs["size"]) > 0
    # The upload step was skipped by its guard, not run as ci/act's stand-in.
    assert "ran under act" not in log
