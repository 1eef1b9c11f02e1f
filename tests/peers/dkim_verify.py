#!/usr/bin/env python3
"""An independent DKIM verifier for mailqueue's tests (dkimpy).

Usage: dkim_verify.py MESSAGE_FILE NAME=RECORD...

Verifies every DKIM-Signature of the message, taking the key records from
the arguments (NAME is s1._domainkey.example.org, RECORD the TXT record's
text) instead of DNS. Prints one line per signature, "pass d=... s=..." or
"fail d=... s=...", then dkimpy's log on failure; exits 0 only when the
message has at least one signature and every one verifies.
"""

import io
import logging
import sys

import dkim


def main():
    message = open(sys.argv[1], "rb").read()
    records = {}
    for arg in sys.argv[2:]:
        name, record = arg.split("=", 1)
        records[name.rstrip(".").lower() + "."] = record.encode()

    def dnsfunc(name, timeout=5):
        key = name.decode() if isinstance(name, bytes) else name
        key = key.rstrip(".").lower() + "."
        return records.get(key)

    log = io.StringIO()
    logger = logging.getLogger("dkim-test")
    logger.addHandler(logging.StreamHandler(log))
    logger.setLevel(logging.DEBUG)
    d = dkim.DKIM(message, logger=logger)
    count = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
    if count == 0:
        print("none")
        return 1
    failed = 0
    for i in range(count):
        try:
            ok = d.verify(idx=i, dnsfunc=dnsfunc)
        except dkim.DKIMException as e:
            log.write("exception: %s\n" % e)
            ok = False
        sig = d.signature_fields or {}
        domain = sig.get(b"d", b"?").decode()
        selector = sig.get(b"s", b"?").decode()
        print("%s d=%s s=%s" % ("pass" if ok else "fail", domain, selector))
        failed += 0 if ok else 1
    if failed:
        sys.stdout.write(log.getvalue())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
