"""The command line's own behaviour, in process."""

import io
import logging
import sys

from nbic import cli


def test_messages_go_to_stderr_as_it_is_now_not_as_it_was(monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    assert cli.main(["cpio", "list", "/nonexistent/image"]) == 1
    assert "cannot open image /nonexistent/image" in first.getvalue()
    first.close()  # as a test's capture is closed while a server thread lives on
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("nbic").warning("from a thread, later")
    assert second.getvalue() == "nbic: warning: from a thread, later\n"
