//! A DNS server for tests: dnsmasq on loopback, answering for `.test`.

use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::peers::{require_tool, Reaper};
use super::wait_for;

/// dnsmasq answering for `.test` names from `records` (dnsmasq options
/// such as `--mx-host=d.test,mx.d.test,10`); unknown `.test` names are
/// NXDOMAIN. Returns the process and its port.
pub fn dnsmasq(records: &[String]) -> (Reaper, u16) {
    let bin = require_tool("dnsmasq", "Debian package dnsmasq");
    // The port is free for UDP when picked; its TCP twin, or the UDP port
    // itself a moment later, may not be (tests run in parallel): dnsmasq
    // then exits at once, and another port is tried.
    for _ in 0..5 {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file=",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
            ])
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut proc = Reaper(child);
        // Ready once it answers over TCP (it opens UDP and TCP together).
        let mut exited = false;
        let ready = wait_for(Duration::from_secs(20), || {
            exited = proc.0.try_wait().ok().flatten().is_some();
            exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if ready && !exited {
            return (proc, port);
        }
    }
    panic!("dnsmasq did not start (5 ports tried)");
}
