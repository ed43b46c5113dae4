#!/bin/sh
# The python image's session, the check its build replays on the image alone,
# and its /init: the notes service starts on the loopback, stores a note over
# HTTP, reads it back and prints NOTES-SERVICE-OK (the boot check's marker).
set -eu
python3 /srv/notes/notes.py selftest
