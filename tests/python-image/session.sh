#!/bin/sh
# What a small service image uses: Python's standard library, perl, sqlite3,
# time zones, NSS and the kernel's random numbers.
set -e
python3 - <<'PY'
import hashlib, json, sqlite3, ssl, zoneinfo, datetime, os
db = sqlite3.connect(":memory:")
db.execute("create table t (x)")
db.execute("insert into t values (?)", (json.dumps({"a": 1}),))
row = db.execute("select x from t").fetchone()[0]
ctx = ssl.create_default_context()
cas = ctx.cert_store_stats()["x509_ca"]
assert cas > 50, cas
when = datetime.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
print("PY-OK", json.loads(row)["a"], hashlib.sha256(b"nbic").hexdigest()[:8],
      when.utcoffset(), len(os.urandom(8)))
PY
perl -MPOSIX -MList::Util=sum -MData::Dumper -e 'print "PERL-OK ", sum(1..4), " ", POSIX::floor(2.5), "\n"'
sqlite3 :memory: 'select "SQLITE-OK", 6*7;'
TZ=Asia/Tokyo date -d @0 '+TZ-OK %H'
getent passwd root | cut -d: -f1,6 | sed 's/^/NSS-OK /'
head -c 8 /dev/urandom | od -An -tx1 | wc -w | sed 's/^/URANDOM-OK /'
