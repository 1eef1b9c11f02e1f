//! Connecting: TCP (address by address), a Unix socket, and TLS, whether
//! implicit or after STARTTLS, with the connector built from the policy.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::tls::PeerCheck;
use super::{ClientSettings, Endpoint, Session};
use crate::delivery::tls_report::TlsReport;
use crate::delivery::{DeliveryError, ErrorKind};
use crate::smtp::transport::{Stream, Transport, Watchdog};

impl Session {
    /// Connects, reads the greeting, says EHLO/LHLO, upgrades to TLS as
    /// the policy says and authenticates when credentials are set.
    pub fn open(
        settings: &Arc<ClientSettings>,
        endpoint: &Endpoint,
        implicit_tls: bool,
    ) -> Result<Session, DeliveryError> {
        let (transport, host, relay) = match endpoint {
            Endpoint::Tcp { host, port } => {
                let (stream, addr) = connect_tcp(settings, host, *port)?;
                let _ = stream.set_nodelay(true);
                (
                    Stream::Tcp(stream).into(),
                    host.clone(),
                    format!("{host}[{}]:{port}", addr.ip()),
                )
            }
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|e| {
                    DeliveryError::network(&format!("connect to {}", path.display()), &e)
                })?;
                (
                    Stream::Unix(stream).into(),
                    "localhost".to_string(),
                    path.display().to_string(),
                )
            }
        };
        Self::open_on(settings, transport, host, relay, implicit_tls, None)
    }

    /// Runs the session set-up on an already connected TCP stream (the
    /// MX client connects itself, address by address); `check`, when
    /// given, requires TLS and decides whether the certificate will do.
    pub fn open_stream(
        settings: &Arc<ClientSettings>,
        stream: TcpStream,
        host: &str,
        relay: String,
        check: Option<Arc<dyn PeerCheck>>,
    ) -> Result<Session, DeliveryError> {
        let _ = stream.set_nodelay(true);
        Self::open_on(
            settings,
            Stream::Tcp(stream).into(),
            host.to_string(),
            relay,
            false,
            check,
        )
    }
}

/// Connects to the first address of `host` that answers, of the
/// families the settings allow.
fn connect_tcp(
    settings: &ClientSettings,
    host: &str,
    port: u16,
) -> Result<(TcpStream, SocketAddr), DeliveryError> {
    let addrs = resolve(settings, host, port)?;
    let outbound = settings.outbound();
    let mut last = None;
    for addr in addrs {
        let relay = format!("{host}[{}]:{port}", addr.ip());
        match outbound.connect(addr, settings.connect_timeout, &relay) {
            Ok(s) => return Ok((s, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| DeliveryError::new(ErrorKind::Dns, &format!("{host} has no address")))
        .at(host))
}

/// The addresses of `host` (or the address it is), in the resolver's
/// order, less those of a family outgoing connections do not use.
fn resolve(
    settings: &ClientSettings,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, DeliveryError> {
    let all: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| DeliveryError::new(ErrorKind::Dns, &format!("cannot resolve {host}: {e}")))?
        .collect();
    let outbound = settings.outbound();
    let usable: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| outbound.allows(&a.ip()))
        .collect();
    // Something was found, but none of it may be used: say why.
    if usable.is_empty() && !all.is_empty() {
        return Err(outbound.no_address(&[host.to_string()]).at(host));
    }
    Ok(usable)
}

/// Runs the TLS handshake on a TCP stream (others are left as they are),
/// checking the certificate as `check` or the policy asks; the report
/// says what the session's TLS amounted to.
pub(super) fn tls_handshake(
    settings: &ClientSettings,
    transport: Transport,
    host: &str,
    check: Option<&dyn PeerCheck>,
) -> Result<(Transport, TlsReport), DeliveryError> {
    if !matches!(transport.stream(), Stream::Tcp(_)) {
        return Ok((transport, TlsReport::None));
    }
    let Stream::Tcp(tcp) = transport.into_stream() else {
        unreachable!("a TCP stream")
    };
    let client = settings
        .tls_connector
        .as_ref()
        .ok_or_else(|| DeliveryError::new(ErrorKind::Config, "TLS is not configured"))?;
    // The whole handshake within command_timeout, as Postfix's
    // smtp_starttls_timeout: each read and write alone is not enough.
    let _deadline = Watchdog::arm(&tcp, settings.command_timeout);
    let (stream, report) = client.handshake(tcp, host, check)?;
    Ok((Stream::ClientTls(Box::new(stream)).into(), report))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::testing::{server, settings};
    use super::super::tls_connector;
    use super::*;
    use crate::smtp::tls_policy::TlsPolicy;

    #[test]
    fn a_tls_handshake_trickled_byte_by_byte_ends_at_the_command_timeout() {
        // After the client's hello, a server record announced 16 KiB long
        // arrives a byte every 100 ms: each read is within the timeout, the
        // handshake never is. Bounded: the server gives up after 15 s.
        let endpoint = server(|mut s| {
            let mut hello = [0u8; 512];
            let _ = s.read(&mut hello);
            if s.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
                return;
            }
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until && s.write_all(&[0]).is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let settings = Arc::new(ClientSettings {
            tls: TlsPolicy::Encrypt,
            tls_connector: tls_connector(TlsPolicy::Encrypt, None)
                .unwrap()
                .map(Arc::new),
            ..(*settings(Duration::from_millis(500))).clone()
        });
        let started = Instant::now();
        let e = Session::open(&settings, &endpoint, true)
            .err()
            .expect("a handshake that never ends cannot open a session");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.reply().code, 451, "{e}");
    }
}
