#!/usr/bin/env python3
"""An SMTP or LMTP server for mailqueue's integration tests (aiosmtpd).

It listens on 127.0.0.1 on a port the kernel picks (or on a Unix socket),
prints "PORT <n>" on stdout once it accepts connections (0 for a socket),
and records what it is told in the directory given with --dir:

  events.jsonl     one JSON object per line and per step (ehlo, auth, mail,
                   rcpt, data), with the reply the server gave; "pending" at
                   MAIL is what the client had sent beyond it unanswered
  <n>.eml          the bytes of each accepted message, as received after
                   dot-unstuffing
  <n>.json         its envelope: sender, recipients, parameters, TLS, AUTH

Faults are injected by the local part of a recipient address:

  tempfail-rcpt*   450 4.2.1 at RCPT
  permfail-rcpt*   550 5.1.1 at RCPT
  flaky-rcpt*      450 4.2.1 at RCPT the first time, accepted after that
  tempfail-data*   451 4.3.0 after DATA (LMTP: 452 4.2.2 for that recipient only)
  permfail-data*   554 5.6.0 after DATA (LMTP: 552 5.2.2 for that recipient only)
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def local_part(address):
    return address.rsplit("@", 1)[0].lower()


class Recorder:
    def __init__(self, directory, lmtp, pipelining):
        self.dir = directory
        self.lmtp = lmtp
        self.pipelining = pipelining
        self.count = 0
        self.seen = {}
        self.events = open(os.path.join(directory, "events.jsonl"), "a", buffering=1)

    def event(self, **fields):
        self.events.write(json.dumps(fields) + "\n")

    def write_atomically(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.event(step="ehlo", name=hostname, tls=is_tls(server))
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        # What the client sent after MAIL before hearing its reply: the
        # RCPTs when it pipelines.
        pending = bytes(server._reader._buffer).decode("utf-8", "replace")
        self.event(step="mail", sender=plain(address), options=mail_options,
                   tls=is_tls(server), pending=pending)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        lp = local_part(address)
        if lp.startswith("tempfail-rcpt"):
            reply = "450 4.2.1 Mailbox busy (test)"
        elif lp.startswith("permfail-rcpt"):
            reply = "550 5.1.1 No such user (test)"
        elif lp.startswith("flaky-rcpt") and address not in self.seen:
            self.seen[address] = True
            reply = "450 4.2.1 Try again (test)"
        else:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.append(rcpt_options)
            reply = "250 2.1.5 OK"
        self.event(step="rcpt", address=address, options=rcpt_options, reply=reply)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.lmtp:
            replies = [self.lmtp_reply(r) for r in envelope.rcpt_tos]
            delivered = [r for r, x in zip(envelope.rcpt_tos, replies) if x.startswith("250")]
            reply = "\r\n".join(replies)
        else:
            lps = [local_part(r) for r in envelope.rcpt_tos]
            if any(lp.startswith("tempfail-data") for lp in lps):
                reply = "451 4.3.0 Try again later (test)"
            elif any(lp.startswith("permfail-data") for lp in lps):
                reply = "554 5.6.0 Message refused (test)"
            else:
                reply = "250 2.0.0 OK: stored"
            delivered = envelope.rcpt_tos if reply.startswith("250") else []
        self.event(step="data", recipients=envelope.rcpt_tos, reply=reply)
        if delivered:
            self.count += 1
            n = self.count
            self.write_atomically(f"{n}.eml", envelope.original_content)
            auth = session.auth_data
            meta = {
                "sender": plain(envelope.mail_from),
                "recipients": delivered,
                "mail_options": envelope.mail_options,
                "rcpt_options": envelope.rcpt_options,
                "tls": is_tls(server),
                "auth": auth.login.decode() if isinstance(auth, LoginPassword) else None,
            }
            self.write_atomically(f"{n}.json", json.dumps(meta).encode())
        return reply

    @staticmethod
    def lmtp_reply(address):
        lp = local_part(address)
        if lp.startswith("tempfail-data"):
            return f"452 4.2.2 <{address}> Mailbox full (test)"
        if lp.startswith("permfail-data"):
            return f"552 5.2.2 <{address}> Over quota for good (test)"
        return f"250 2.0.0 <{address}> delivered"


def plain(sender):
    """aiosmtpd gives the null sender as "<>" (and needs it so); record "" instead."""
    return "" if sender == "<>" else sender


def is_tls(server):
    return server.transport is not None and server.transport.get_extra_info("ssl_object") is not None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True, help="where to record what arrives")
    p.add_argument("--lmtp", action="store_true", help="speak LMTP instead of SMTP")
    p.add_argument("--tls-cert", help="PEM certificate: offer STARTTLS")
    p.add_argument("--tls-key", help="PEM key for --tls-cert")
    p.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (smtps)")
    p.add_argument("--auth", help="USER:PASSWORD; then AUTH is required before MAIL")
    p.add_argument("--auth-mechs", default="PLAIN,LOGIN", help="mechanisms to offer")
    p.add_argument("--auth-clear", action="store_true", help="offer AUTH without TLS")
    p.add_argument("--no-smtputf8", action="store_true", help="do not offer SMTPUTF8")
    p.add_argument("--pipelining", action="store_true", help="announce PIPELINING")
    p.add_argument("--refuse-starttls", action="store_true",
                   help="offer STARTTLS but answer it with 554 5.7.3")
    p.add_argument("--size", type=int, default=33554432, help="SIZE limit to announce")
    p.add_argument("--unix", help="listen on this Unix socket instead of TCP")
    args = p.parse_args()

    recorder = Recorder(args.dir, args.lmtp, args.pipelining)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)

    options = dict(
        hostname="peer.test",
        decode_data=False,
        enable_SMTPUTF8=not args.no_smtputf8,
        data_size_limit=args.size,
        timeout=30,
    )
    if context is not None and not args.implicit_tls:
        options["tls_context"] = context
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, data):
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == user
                and data.password.decode() == password
            )
            recorder.event(step="auth", mechanism=mechanism, ok=ok)
            # handled=False: aiosmtpd sends the 535 itself.
            return AuthResult(success=ok, handled=False, auth_data=data)

        offered = {m.strip().upper() for m in args.auth_mechs.split(",")}
        options.update(
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=not args.auth_clear,
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if m not in offered],
        )
    cls = LMTP if args.lmtp else SMTP
    if args.refuse_starttls:

        class Refusing(cls):
            async def smtp_STARTTLS(self, arg):
                await self.push("554 5.7.3 TLS not available today (test)")

        cls = Refusing

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    factory = lambda: cls(recorder, loop=loop, **options)
    if args.unix:
        server = loop.run_until_complete(loop.create_unix_server(factory, path=args.unix))
        print("PORT 0", flush=True)
    else:
        server = loop.run_until_complete(
            loop.create_server(
                factory,
                host="127.0.0.1",
                port=0,
                ssl=context if args.implicit_tls else None,
            )
        )
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
