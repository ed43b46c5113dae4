"""cpio-du: where the bytes of an image are, by directory, file or package."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from nbic.errors import UsageError
from nbic.output import refuse_inputs
from nbic.tools.common import emit
from nbic.usage import SizeReport, human_size, size_report

if TYPE_CHECKING:
    from nbic.packages import PackageReport

HELP = "show where the bytes of an image are"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image (\"-\" for standard input)")
    parser.add_argument("--depth", type=int, default=2, metavar="N",
                        help="directory levels to show (default 2)")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="how many of the largest files to show (default 20)")
    parser.add_argument("--by-package", metavar="ROOTFS",
                        help="each Debian package's share instead, by the dpkg database of "
                             "the rootfs (a directory or a tar) the image was made from")
    parser.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object (schema: docs/size-reports.md)")


def run(args: argparse.Namespace) -> int:
    if args.depth < 0 or args.top < 0:
        raise UsageError("--depth and --top must not be negative")
    refuse_inputs(["-"], [args.image])
    if args.by_package:
        # Imported here: the rootfs readers cost the other tools' start-up time.
        from nbic.packages import package_report

        report: PackageReport | SizeReport = package_report(args.image, args.by_package)
    else:
        report = size_report(args.image, depth=args.depth, top=args.top, top_directories=None)
    if args.json:
        emit(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.format(str if args.bytes else human_size).splitlines():
            emit(line)
    sys.stdout.flush()
    return 0
