#!/usr/bin/env python3
"""An SMTP sink for mailqueue's reliability tests: plain sockets, one thread
per connection, seeded random faults.

It listens on 127.0.0.1 on a port the kernel picks, prints "PORT <n>" on
stdout once it accepts connections, and appends to files in --dir:

  deliveries.jsonl  one line per message it accepted (written just before
                    the 250 to the final dot goes out): the time the dot
                    came, the time of the reply, connection, sender, recipients,
                    X-Seq and Message-ID of the message; for a notice (null
                    sender) also the queue id it reports on and one entry
                    per recipient block (final recipient, action, status)
  connections.jsonl one line when a session opens (before the greeting) and
                    one when it ends (before the reply to QUIT goes out, so
                    a client that waits for it opens its next connection
                    after the line): time, connection, event ("open" or
                    "close"), and how many sessions were open after it
  events.jsonl      one line per injected fault: time, connection, step,
                    kind, the reply sent (with its token "fault-<n>"), the
                    recipients the transaction had; a stall's line is
                    written when the client gives up, with how long it waited

Each line is written with one write(2) on a file opened for appending, so
a reader never sees half a line once the writer has moved on.

Recipients whose local part starts with --reject-prefix get 550 5.1.1 at
RCPT, always; those starting with --flaky-prefix get 450 4.2.1 at RCPT with
probability --flaky-rate (seeded). With --fault-rate P, a connection has a fault with
probability P, at one step chosen at random:

  greeting  421 or 554 instead of 220, a malformed greeting, a stall, a hang-up
  EHLO, MAIL, RCPT, DATA, the final dot
            4xx or 5xx, a malformed reply, a stall (no reply at all), a
            trickle (a reply one byte at a time, each byte sooner than the
            client's timeout, the whole far later), a hang-up without reply
  body      a hang-up in the middle of the message, or a stall (stops
            reading)
  RSET      4xx or 5xx, a stall, a hang-up (the client checks a session
            with RSET before it keeps it for the next message)
  QUIT      5xx, a stall, a hang-up (after the message was accepted)

A connection that carries several messages draws a fault for each one.

Malformed replies: no code, two- or four-digit codes, codes out of range,
a multi-line reply whose lines disagree, binary bytes, a line longer than
any client accepts, a multi-line reply that goes on for 300 lines.

--reply-delay MIN:MAX (seconds) waits a random time before answering the
final dot, so that attempts are in flight when the client is killed.
"""

import argparse
import json
import os
import random
import re
import socket
import socketserver
import sys
import threading
import time

LOCK = threading.Lock()
STEPS = ["greeting", "ehlo", "mail", "rcpt", "data", "body", "dot", "rset", "quit"]
# Steps of a transaction: a connection that carries several messages
# draws again for each one.
TXN_STEPS = ["mail", "rcpt", "data", "body", "dot", "rset", "quit"]
KINDS = {
    "greeting": ["421", "5xx", "malformed", "stall", "drop"],
    "ehlo": ["4xx", "5xx", "malformed", "stall", "trickle", "drop"],
    "mail": ["4xx", "5xx", "malformed", "stall", "trickle", "drop"],
    "rcpt": ["4xx", "5xx", "malformed", "stall", "trickle", "drop"],
    "data": ["4xx", "5xx", "malformed", "stall", "trickle", "drop"],
    "body": ["drop", "stall"],
    "dot": ["4xx", "5xx", "malformed", "stall", "trickle", "drop"],
    "rset": ["4xx", "5xx", "stall", "drop"],
    "quit": ["5xx", "stall", "drop"],
}
MALFORMED = [
    b"hello there\r\n",
    b"25 short code\r\n",
    b"2500 long code\r\n",
    b"250-first line\r\n550 second line disagrees\r\n",
    b"199 below range\r\n",
    b"600 above range\r\n",
    b"\x00\xff\xfe\x01 binary\r\n",
    b"250 " + b"x" * 5000 + b"\r\n",
    b"250-endless\r\n" * 300 + b"250 end\r\n",
]


class Closed(Exception):
    pass


class Sink:
    def __init__(self, args):
        self.dir = args.dir
        self.rng = random.Random(args.seed)
        self.fault_rate = args.fault_rate
        self.reject_prefix = args.reject_prefix
        self.flaky_prefix = args.flaky_prefix
        self.flaky_rate = args.flaky_rate
        self.pipelining = args.pipelining
        self.stall_limit = args.stall_limit
        self.trickle = args.trickle
        lo, _, hi = (args.reply_delay or "0:0").partition(":")
        self.delay = (float(lo), float(hi or lo))
        self.conns = 0
        self.open = 0
        self.tokens = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.deliveries = os.open(os.path.join(self.dir, "deliveries.jsonl"), flags, 0o644)
        self.events = os.open(os.path.join(self.dir, "events.jsonl"), flags, 0o644)
        self.connections = os.open(os.path.join(self.dir, "connections.jsonl"), flags, 0o644)

    def record(self, fd, fields):
        line = (json.dumps(fields) + "\n").encode()
        with LOCK:
            os.write(fd, line)

    def new_connection(self):
        with LOCK:
            self.conns += 1
            n = self.conns
            pipelining = self.pipelining or (self.fault_rate > 0 and self.rng.random() < 0.5)
        return n, self.draw(STEPS), pipelining

    def session_changed(self, conn, event, change):
        """Counts the sessions open; records the change."""
        with LOCK:
            self.open += change
            line = json.dumps({"t": time.time(), "conn": conn, "event": event,
                               "open": self.open}) + "\n"
            os.write(self.connections, line.encode())

    def draw(self, steps):
        """The fault of a connection or of a transaction, or None."""
        with LOCK:
            if self.fault_rate <= 0 or self.rng.random() >= self.fault_rate:
                return None
            step = self.rng.choice(steps)
            return {
                "step": step,
                "kind": self.rng.choice(KINDS[step]),
                # Which RCPT of the transaction, and where in the body.
                "index": self.rng.randrange(3),
                "cut": self.rng.randrange(1, 2000),
                "malformed": self.rng.choice(MALFORMED),
            }

    def chance(self, p):
        with LOCK:
            return self.rng.random() < p

    def reply_delay(self):
        with LOCK:
            return self.rng.uniform(*self.delay)

    def token(self):
        with LOCK:
            self.tokens += 1
            return f"fault-{self.tokens}"


def header(message, name):
    m = re.search(rb"^" + name + rb":[ \t]*(.*?)\r?$", message, re.M | re.I)
    return m.group(1).decode("utf-8", "replace").strip() if m else None


def notice_fields(message):
    """What a delivery status notification says, line by line."""
    text = message.decode("utf-8", "replace")
    queue_id = re.search(r"^X-Mailqueue-Queue-ID:\s*(\S+)", text, re.M)
    recipients = []
    for block in re.split(r"\r?\n\r?\n", text):
        final = re.search(r"^Final-Recipient:\s*[^;]*;\s*(\S+)", block, re.M)
        if not final:
            continue
        field = lambda n: (re.search(r"^" + n + r":\s*(.*?)\s*$", block, re.M) or [None, None])[1]
        recipients.append({
            "rcpt": final.group(1),
            "action": field("Action"),
            "status": field("Status"),
            "diagnostic": field("Diagnostic-Code"),
        })
    return {"of": queue_id.group(1) if queue_id else None, "recipients": recipients}


class Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.sink = self.server.sink
        self.conn, self.fault, self.pipelining = self.sink.new_connection()
        self.buf = b""
        self.sock = self.request
        # Replies go out at once: with Nagle's algorithm a second small
        # reply waits for the client's delayed ACK.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.sink.stall_limit)
        self.rcpt_count = 0
        self.rcpts = []
        self.sender = None
        self.counted = True
        self.sink.session_changed(self.conn, "open", 1)

    def uncount(self):
        """The session is over for the count of open sessions (once)."""
        if self.counted:
            self.counted = False
            self.sink.session_changed(self.conn, "close", -1)

    # --- I/O -------------------------------------------------------------

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            raise Closed()

    def line(self):
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                raise Closed()
            if not chunk:
                raise Closed()
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def event(self, step, kind, **more):
        fields = {"t": time.time(), "conn": self.conn, "step": step, "kind": kind,
                  "rcpts": list(self.rcpts)}
        fields.update(more)
        self.sink.record(self.sink.events, fields)

    # --- faults ----------------------------------------------------------

    def faulty(self, step):
        f = self.fault
        if f is None or f["step"] != step:
            return None
        if step == "rcpt" and self.rcpt_count != f["index"]:
            return None
        return f["kind"]

    def inject(self, step, kind):
        """Carries out a fault at a step that expects a reply. Returns True
        when the session goes on (a 4xx/5xx reply), raises Closed otherwise."""
        token = self.sink.token()
        if kind in ("4xx", "5xx", "421"):
            if kind == "421":
                reply = f"421 4.3.2 {token} service shutting down"
            elif kind == "4xx":
                code = {"mail": "451 4.3.0", "rcpt": "450 4.2.1", "data": "451 4.3.0",
                        "dot": "451 4.3.0", "ehlo": "421 4.3.2"}.get(step, "451 4.3.0")
                reply = f"{code} {token} try again later"
            else:
                code = {"greeting": "554 5.3.2", "mail": "553 5.1.8", "rcpt": "550 5.1.1",
                        "data": "554 5.3.0", "dot": "554 5.6.0", "ehlo": "502 5.5.1",
                        "quit": "500 5.5.1"}.get(step, "550 5.0.0")
                reply = f"{code} {token} refused for good"
            self.event(step, kind, token=token, reply=reply)
            self.send(reply.encode() + b"\r\n")
            if kind == "421" or (step == "greeting"):
                raise Closed()
            return True
        if kind == "malformed":
            data = self.fault["malformed"]
            self.event(step, kind, token=token, reply=data[:80].decode("latin-1"))
            self.send(data)
            # What follows is anyone's guess: hang up.
            raise Closed()
        if kind == "drop":
            self.event(step, kind, token=token)
            raise Closed()
        if kind == "stall":
            self.stall(step, token)
        if kind == "trickle":
            self.trickle(step, token)
        raise Closed()

    def stall(self, step, token):
        """Answers nothing; reads until the client gives up."""
        start = time.time()
        self.sock.settimeout(self.sink.stall_limit)
        gave_up = True
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                if time.time() - start > self.sink.stall_limit:
                    gave_up = False
                    break
        except socket.timeout:
            gave_up = False
        except OSError:
            pass
        self.event(step, "stall", token=token, waited=time.time() - start, client_gave_up=gave_up)

    def trickle(self, step, token):
        """Sends a reply one byte at a time until the client gives up."""
        start = time.time()
        data = f"451 4.3.0 {token} a very slow reply ".encode() + b"." * 200 + b"\r\n"
        gave_up = False
        for b in data:
            try:
                self.sock.sendall(bytes([b]))
            except OSError:
                gave_up = True
                break
            # Has the client closed? Peek without blocking for long.
            self.sock.settimeout(self.sink.trickle)
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    gave_up = True
                    break
            except socket.timeout:
                pass
            except OSError:
                gave_up = True
                break
            if time.time() - start > self.sink.stall_limit:
                break
        self.event(step, "trickle", token=token, waited=time.time() - start, client_gave_up=gave_up)

    # --- the session -----------------------------------------------------

    def handle(self):
        try:
            self.session()
        except Closed:
            pass
        finally:
            self.uncount()
            try:
                self.sock.close()
            except OSError:
                pass

    def session(self):
        kind = self.faulty("greeting")
        if kind:
            self.inject("greeting", kind)
        self.send(b"220 sink.test ESMTP faulty sink\r\n")
        pipelining = self.pipelining
        while True:
            line = self.line()
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                # Only EHLO: a client that falls back to HELO gets on.
                kind = self.faulty("ehlo") if verb == b"EHLO" else None
                if kind and self.inject("ehlo", kind):
                    continue
                if verb == b"HELO":
                    self.send(b"250 sink.test\r\n")
                    continue
                ext = [b"250-sink.test", b"250-SIZE 33554432", b"250-8BITMIME",
                       b"250-ENHANCEDSTATUSCODES"]
                if pipelining:
                    ext.append(b"250-PIPELINING")
                self.send(b"\r\n".join(ext) + b"\r\n250 SMTPUTF8\r\n")
            elif verb == b"MAIL":
                kind = self.faulty("mail")
                if kind and self.inject("mail", kind):
                    continue
                m = re.match(rb"MAIL FROM:\s*<([^>]*)>", line, re.I)
                self.sender = m.group(1).decode("utf-8", "replace") if m else ""
                self.rcpts = []
                self.rcpt_count = 0
                self.send(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                kind = self.faulty("rcpt")
                m = re.match(rb"RCPT TO:\s*<([^>]*)>", line, re.I)
                address = m.group(1).decode("utf-8", "replace") if m else ""
                self.rcpt_count += 1
                if kind:
                    self.event("rcpt-offered", "info", rcpt=address)
                    # The fault is about this address.
                    saved, self.rcpts = self.rcpts, [address]
                    try:
                        self.inject("rcpt", kind)
                    finally:
                        self.rcpts = saved
                    continue
                if self.sender is None:
                    self.send(b"503 5.5.1 Error: need MAIL command\r\n")
                elif self.sink.reject_prefix and address.split("@")[0].startswith(self.sink.reject_prefix):
                    self.send(b"550 5.1.1 No such user (test)\r\n")
                elif (self.sink.flaky_prefix and address.split("@")[0].startswith(self.sink.flaky_prefix)
                        and self.sink.chance(self.sink.flaky_rate)):
                    self.send(b"450 4.2.1 Mailbox busy, try again (test)\r\n")
                else:
                    self.rcpts.append(address)
                    self.send(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                kind = self.faulty("data")
                if kind and self.inject("data", kind):
                    continue
                if not self.rcpts:
                    self.send(b"554 5.5.1 Error: no valid recipients\r\n")
                    continue
                self.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.data()
            elif verb == b"RSET":
                kind = self.faulty("rset")
                if kind and self.inject("rset", kind):
                    continue
                self.sender, self.rcpts = None, []
                self.send(b"250 2.0.0 Ok\r\n")
                self.next_transaction()
            elif verb == b"NOOP":
                self.send(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                kind = self.faulty("quit")
                if kind:
                    self.inject("quit", kind)
                self.uncount()
                self.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                self.send(b"502 5.5.2 Error: command not recognized\r\n")

    def data(self):
        body_fault = self.faulty("body")
        message = bytearray()
        while True:
            if body_fault and len(message) >= self.fault["cut"]:
                token = self.sink.token()
                if body_fault == "stall":
                    self.stall("body", token)
                else:
                    self.event("body", "drop", token=token, after=len(message))
                raise Closed()
            line = self.line()
            if line == b".":
                break
            if line.startswith(b"."):
                line = line[1:]
            message += line + b"\r\n"
        message = bytes(message)
        # The message is complete: a real server would commit it now,
        # whatever happens to the connection while it prepares the reply.
        at_dot = time.time()
        kind = self.faulty("dot")
        if kind:
            self.inject("dot", kind)
        else:
            delay = self.sink.reply_delay()
            if delay > 0:
                time.sleep(delay)
            fields = {
                "t": at_dot,
                "replied": time.time(),
                "conn": self.conn,
                "sender": self.sender,
                "rcpts": self.rcpts,
                "seq": header(message, rb"X-Seq"),
                "msgid": header(message, rb"Message-ID"),
                "size": len(message),
            }
            if self.sender == "":
                fields["notice"] = notice_fields(message)
            # Recorded before the 250 goes out: a client killed before it
            # reads the reply delivers the message again, and the test
            # sees both.
            self.sink.record(self.sink.deliveries, fields)
            self.send(b"250 2.0.0 Ok: queued\r\n")
        self.sender, self.rcpts = None, []
        self.next_transaction()

    def next_transaction(self):
        """A connection that carries another message draws its fault anew."""
        self.fault = self.sink.draw(TXN_STEPS)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--reject-prefix", default="", help="550 at RCPT for these local parts")
    p.add_argument("--flaky-prefix", default="",
                   help="450 at RCPT for these local parts, with probability --flaky-rate")
    p.add_argument("--flaky-rate", type=float, default=0.5)
    p.add_argument("--pipelining", action="store_true", help="announce PIPELINING")
    p.add_argument("--reply-delay", help="MIN:MAX seconds before answering the final dot")
    p.add_argument("--stall-limit", type=float, default=30.0,
                   help="a stall or trickle ends after this many seconds anyway")
    p.add_argument("--trickle", type=float, default=0.3, help="seconds between trickled bytes")
    args = p.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.sink = Sink(args)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
