#!/bin/busybox sh
# The node image's session and its replay check: each program /init runs, used
# as /init uses it but without the host's kernel or network. modprobe resolves
# e1000 in the rootfs's module index without loading it (the host's kernel is
# not the rootfs's); the shell scripts are read in full (sh -n); httpd serves a
# page on the loopback and busybox's wget reads it back.
set -eu
bb=/bin/busybox
release=$($bb ls /lib/modules)
/sbin/modprobe --dry-run --set-version "$release" e1000
$bb sh -n /init
$bb sh -n /etc/udhcpc/default.script
www=$($bb mktemp -d)
echo "node session page" >"$www/index.html"
$bb httpd -f -p 127.0.0.1:8080 -h "$www" &
httpd=$!
tries=0
until $bb wget -q -O - http://127.0.0.1:8080/ | $bb grep -q "node session page"; do
    tries=$((tries + 1))
    [ "$tries" -lt 50 ] || { $bb kill "$httpd"; exit 1; }
    $bb usleep 100000
done
$bb kill "$httpd"
$bb rm -r "$www"  # the image holds nothing the session wrote
echo "node session: ok ($release)"
