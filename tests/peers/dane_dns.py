#!/usr/bin/env python3
"""A tiny DNS server for the DANE tests: answers MX, A and TLSA queries
over UDP on 127.0.0.1 from the records given on the command line, with the
AD bit set as a validating resolver sets it for signed answers (unless
--no-ad). Standard library only.

  --mx DOMAIN=HOST         an MX record (preference 10)
  --a HOST=IP              an A record
  --tlsa NAME=U,S,M,HEX    a TLSA record (usage, selector, matching type, data)
  --txt NAME=TEXT          a TXT record (one string)
  --no-ad                  answer without the AD bit (unsigned zone)
  --dir DIR                queries.log there: one line per query (name type)

A name with records of other types gets an empty answer (NODATA); any other
name is NXDOMAIN. Prints "PORT n" once it listens.
"""

import argparse
import os
import socket
import struct

TYPES = {"A": 1, "MX": 15, "TXT": 16, "AAAA": 28, "TLSA": 52}


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def read_question(packet):
    """The question's name (lower case), type, and the offset after it."""
    at = 12
    labels = []
    while packet[at] != 0:
        n = packet[at]
        labels.append(packet[at + 1:at + 1 + n].decode("ascii").lower())
        at += 1 + n
    qtype, _qclass = struct.unpack("!HH", packet[at + 1:at + 5])
    return ".".join(labels), qtype, at + 5


def record(rtype, rdata):
    # The owner is the question's name: a pointer to offset 12.
    return struct.pack("!HHHIH", 0xC00C, rtype, 1, 60, len(rdata)) + rdata


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--mx", action="append", default=[])
    p.add_argument("--a", action="append", default=[])
    p.add_argument("--tlsa", action="append", default=[])
    p.add_argument("--txt", action="append", default=[])
    p.add_argument("--no-ad", action="store_true")
    args = p.parse_args()

    zone = {}  # name -> list of (type, rdata)
    for spec in args.mx:
        domain, host = spec.split("=", 1)
        zone.setdefault(domain.lower(), []).append(
            (TYPES["MX"], struct.pack("!H", 10) + encode_name(host)))
    for spec in args.a:
        host, ip = spec.split("=", 1)
        zone.setdefault(host.lower(), []).append((TYPES["A"], socket.inet_aton(ip)))
    for spec in args.tlsa:
        name, fields = spec.split("=", 1)
        usage, selector, matching, data = fields.split(",")
        rdata = bytes([int(usage), int(selector), int(matching)]) + bytes.fromhex(data)
        zone.setdefault(name.lower(), []).append((TYPES["TLSA"], rdata))

    for spec in args.txt:
        name, text = spec.split("=", 1)
        data = text.encode("ascii")
        zone.setdefault(name.lower(), []).append((TYPES["TXT"], bytes([len(data)]) + data))

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    print("PORT %d" % sock.getsockname()[1], flush=True)
    log = open(os.path.join(args.dir, "queries.log"), "a", buffering=1)

    while True:
        packet, peer = sock.recvfrom(4096)
        if len(packet) < 12:
            continue
        try:
            name, qtype, end = read_question(packet)
        except (IndexError, UnicodeDecodeError, struct.error):
            continue
        log.write("%s %d\n" % (name, qtype))
        query_id, flags = struct.unpack("!HH", packet[:4])
        answers = [record(t, r) for (t, r) in zone.get(name, []) if t == qtype]
        rcode = 0 if name in zone else 3
        # QR, the opcode and RD as asked, RA; AD for a "signed" zone.
        reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode
        if not args.no_ad:
            reply_flags |= 0x0020
        header = struct.pack("!HHHHHH", query_id, reply_flags, 1, len(answers), 0, 0)
        sock.sendto(header + packet[12:end] + b"".join(answers), peer)


if __name__ == "__main__":
    main()
