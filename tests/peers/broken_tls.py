"""An SMTP server that offers STARTTLS and then botches the handshake, as
some MX hosts do. Without STARTTLS it takes mail and appends each message's
envelope to a file.

usage: broken_tls.py HOST PORT RECORD_FILE
"""
import socketserver
import sys

HOST, PORT, RECORD = sys.argv[1], int(sys.argv[2]), sys.argv[3]


class Handler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        self.reply("220 broken-tls.test ESMTP")
        sender, rcpts = None, []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("latin-1").strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-broken-tls.test")
                self.reply("250-PIPELINING")
                self.reply("250 STARTTLS")
            elif verb == "STARTTLS":
                self.reply("220 2.0.0 go ahead")
                # Not a TLS ServerHello: the client's handshake fails.
                self.wfile.write(b"this is not TLS\r\n" * 4)
                self.wfile.flush()
                return
            elif verb == "MAIL":
                sender, rcpts = cmd[10:], []
                self.reply("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(cmd[8:])
                self.reply("250 2.1.5 ok")
            elif verb == "DATA":
                self.reply("354 go")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                with open(RECORD, "a") as f:
                    f.write("%s -> %s\n" % (sender, " ".join(rcpts)))
                self.reply("250 2.0.0 queued")
            elif verb == "RSET" or verb == "NOOP":
                self.reply("250 2.0.0 ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 no")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server((HOST, PORT), Handler).serve_forever()
