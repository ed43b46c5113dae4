"""nbic.usage: the measured image and the size report `nbic run` and `build` show."""

from __future__ import annotations

import json

from cpio_helpers import run_tool
from test_tools import _du_image

from nbic.usage import human_size, measure, size_report


def test_measure_counts_final_files_and_hardlink_groups_once(tmp_path):
    data, raw = _du_image()
    (tmp_path / "img").write_bytes(data)
    usage = measure(tmp_path / "img")
    assert usage.files == {"etc/small": 10, "top": 7, "usr/bin/alias": 2048,
                           "usr/bin/tool": 2048, "usr/lib/big": 5000,
                           "usr/lib/deep/er/file": 100}
    assert usage.names_of("usr/bin/alias") == ("usr/bin/alias", "usr/bin/alias2")
    assert usage.names_of("usr/bin/tool") == ("usr/bin/tool",)
    assert usage.data == 10 + 7 + 2048 * 2 + 5000 + 100
    assert (usage.entries, usage.raw, usage.compressed) == (18, raw, len(data))
    assert raw > len(data)  # the gzip segment was expanded


def test_size_report(tmp_path):
    data, raw = _du_image()
    (tmp_path / "img").write_bytes(data)
    report = size_report(tmp_path / "img", top=2, top_directories=3)
    assert report.directories == (("usr", 9196), ("usr/lib", 5100), ("usr/bin", 4096))
    assert report.files == (("usr/lib/big", 5000), ("usr/bin/alias", 2048))
    assert report.format().splitlines() == [
        "directories (cumulative, depth 2):",
        "    9.0K  usr/", "    5.0K  usr/lib/", "    4.0K  usr/bin/",
        "largest files (top 2):",
        "    4.9K  usr/lib/big", "    2.0K  usr/bin/alias",
        f"total: 18 entries, 12K data, {human_size(raw)} raw, {human_size(len(data))} image"]
    as_dict = report.to_dict()
    assert as_dict == {
        "schema": "nbic-size-report/1", "image": str(tmp_path / "img"), "entries": 18,
        "data_bytes": 9213, "stored_bytes": 3000 + 9213 + len("usr/bin/tool"),
        "raw_bytes": raw, "compressed_bytes": len(data), "depth": 2,
        "directories": [{"path": "usr", "bytes": 9196}, {"path": "usr/lib", "bytes": 5100},
                        {"path": "usr/bin", "bytes": 4096}],
        "files": [{"path": "usr/lib/big", "bytes": 5000},
                  {"path": "usr/bin/alias", "bytes": 2048}]}
    # cpio-du --json is the same object, with every directory.
    shown = json.loads(run_tool("du", str(tmp_path / "img"), "--json", "--top", "2").stdout)
    assert shown == {**as_dict, "directories": shown["directories"]}
    assert [item["path"] for item in shown["directories"]] == [
        "usr", "usr/lib", "usr/bin", "etc", "empty"]
