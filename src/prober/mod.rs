//! The network prober: one HTTP(S) request to a customer hostname *through* one CDN.
//!
//! Each probe resolves the CDN's target (hickory-resolver; an IP literal skips resolution),
//! opens a **new TCP connection** to it (a dead edge must not hide behind a pooled connection),
//! does TLS with SNI set to the customer hostname, sends `GET <path>` with `Host` set to the
//! customer hostname over HTTP/1.1, and classifies the outcome from the final status line (the
//! headers after it and the body are not read). TLS configuration, including its session cache (resumption keeps probes
//! cheap), is shared by all probes. The certificate's expiry is recorded for HTTPS.
//!
//! What keeps an HTTPS probe cheap (BENCHMARKS.md, issue 17): session resumption; X25519 from
//! aws-lc with the key share reused for 10 s ([`TlsOptions::reuse_key_share`], `key_share`);
//! the request riding in the same write as the client's `Finished`; no `getrandom` system call
//! per handshake; and a close by reset (`SO_LINGER` 0) once the status is read, so no
//! connection lingers in `TIME_WAIT` on either side. Probes run on the engine's runtime: the
//! dedicated probe threads tried earlier cost more in cross-thread wake-ups than they saved.
//!
//! Targets that resolve to loopback, private, link-local or otherwise non-public addresses are
//! refused (`blocked`) unless the operator allows them (`probe_allow_private`), so customers
//! cannot point Tranche at the operator's own network.

mod key_share;

use crate::resolver::resolver;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tranche_actors::ports::Prober;
use tranche_core::domain::{ProbeScheme, TargetHost};
use tranche_core::probe::{Outcome, ProbeRequest, ProbeResult};

/// TLS sessions kept for resumption (one per hostname and CDN target, roughly).
const SESSION_CACHE: usize = 65_536;

const USER_AGENT: &str = concat!("tranche-probe/", env!("CARGO_PKG_VERSION"));

/// The certificates of a PEM file (a private CA the probes trust).
pub fn roots_from_pem_file(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)?;
    let roots = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!roots.is_empty(), "no certificate in it");
    Ok(roots)
}

/// How HTTPS probes do TLS. Both cheapen a probe without weakening what it checks (the
/// certificate is verified on every full handshake); see [`NetworkProber::with_tls`].
#[derive(Clone, Copy, Debug)]
pub struct TlsOptions {
    /// Resume TLS sessions (each probed hostname keeps its session): a resumed handshake skips
    /// the certificate chain and the server's signature.
    pub resumption: bool,
    /// Reuse the X25519 key share for a few seconds instead of making one per handshake
    /// (`probe_tls_reuse_key_share`; the trade-off is in the `key_share` module's docs).
    pub reuse_key_share: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            resumption: true,
            reuse_key_share: true,
        }
    }
}

/// Probes over the network. Cheap to clone behind an `Arc`; share one per node.
pub struct NetworkProber {
    tls: TlsConnector,
    expiries: Expiries,
    resolver: Option<hickory_resolver::TokioResolver>,
    allow_private: bool,
}

impl NetworkProber {
    /// `extra_roots`: PEM certificates trusted in addition to the public web PKI (e.g. a private
    /// CA in front of internal edges, or the tests' self-signed CA).
    pub fn new(
        extra_roots: &[CertificateDer<'static>],
        allow_private: bool,
    ) -> anyhow::Result<Self> {
        Self::with_tls(extra_roots, allow_private, TlsOptions::default())
    }

    /// As [`NetworkProber::new`], with TLS options (`resumption: false` makes every HTTPS probe
    /// a full handshake with certificate verification, as benchmarks comparing probers need).
    pub fn with_tls(
        extra_roots: &[CertificateDer<'static>],
        allow_private: bool,
        options: TlsOptions,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots.add(cert.clone())?;
        }
        // Prefer AES-128-GCM/SHA-256: as safe for a health probe, and its key schedule uses
        // SHA-256 (hardware-accelerated) rather than SHA-384, a visible share of probe CPU.
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        // X25519 from aws-lc, its key share reused for a few seconds unless told otherwise
        // (`key_share`): the key exchange was the largest share of an HTTPS probe's CPU.
        let x25519: &'static dyn rustls::crypto::SupportedKxGroup = if options.reuse_key_share {
            &key_share::REUSED
        } else {
            &key_share::FRESH
        };
        provider.secure_random = &key_share::AwsLcRandom;
        for group in &mut provider.kx_groups {
            if group.name() == rustls::NamedGroup::X25519 {
                *group = x25519;
            }
        }
        let provider = Arc::new(provider);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Resumption skips the certificate chain verification and key exchange that dominate a
        // probe's cost. Every probed hostname keeps its session (rustls' default holds 256).
        config.resumption = if options.resumption {
            rustls::client::Resumption::in_memory_sessions(SESSION_CACHE)
        } else {
            rustls::client::Resumption::disabled()
        };
        let resolver = resolver(&[], None)?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            expiries: Expiries::default(),
            resolver,
            allow_private,
        })
    }

    /// Resolves edge hostnames through these nameservers (UDP, then TCP) instead of the
    /// system's: for private DNS views, and for tests with a local DNS server.
    pub fn with_nameservers(mut self, servers: &[SocketAddr]) -> anyhow::Result<Self> {
        if !servers.is_empty() {
            self.resolver = resolver(servers, None)?;
        }
        Ok(self)
    }

    async fn resolve(&self, host: &TargetHost) -> Result<IpAddr, (Outcome, String)> {
        let ip = match host {
            TargetHost::Ip(ip) => *ip,
            TargetHost::Name(name) => {
                let resolver = self
                    .resolver
                    .as_ref()
                    .ok_or((Outcome::Dns, "no DNS resolver configured".to_owned()))?;
                // Boxed: the lookup's state is large, and probes of IP targets (or ones that
                // never resolve) need not carry it in their future.
                let lookup = Box::pin(resolver.lookup_ip(name.as_str()))
                    .await
                    .map_err(|e| (Outcome::Dns, format!("resolving {name}: {e}")))?;
                lookup
                    .iter()
                    .next()
                    .ok_or((Outcome::Dns, format!("{name} has no addresses")))?
            }
        };
        if !self.allow_private && !is_public(ip) {
            return Err((Outcome::Blocked, format!("{ip} is not a public address")));
        }
        Ok(ip)
    }

    async fn run(
        &self,
        req: &ProbeRequest,
    ) -> Result<(u16, Option<DateTime<Utc>>), (Outcome, String)> {
        let ip = self.resolve(&req.target.host).await?;
        let port = req.target.port.unwrap_or(req.scheme.default_port());
        let tcp = TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .map_err(|e| (Outcome::Connect, format!("connecting to {ip}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        // Close with a reset rather than a FIN exchange once the status is read (as HAProxy
        // does for its health checks): neither side keeps the connection in TIME_WAIT, and the
        // close costs less than half the kernel work. Nothing is lost: the probe has its answer.
        let _ = tcp.set_zero_linger();
        let head = request_head(req);
        match req.scheme {
            ProbeScheme::Http => request(tcp, &head).await.map(|s| (s, None)),
            ProbeScheme::Https => {
                let name = ServerName::try_from(req.hostname.clone())
                    .map_err(|e| (Outcome::Tls, format!("invalid SNI name: {e}")))?;
                // The request is handed to rustls before the handshake: it is sent, encrypted,
                // in the same write (and TCP segment) as the client's `Finished`, instead of a
                // write of its own after the handshake.
                let mut queued = Ok(());
                let handshake = self.tls.connect_with(name, tcp, |conn| {
                    use std::io::Write;
                    // Buffered until the handshake completes (rustls holds up to 64 KiB).
                    queued = conn.writer().write_all(head.as_bytes());
                });
                queued.map_err(|e| io_error("queueing the request", e))?;
                let tls = handshake
                    .await
                    .map_err(|e| (Outcome::Tls, format!("TLS handshake: {e}")))?;
                let expiry = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| self.expiries.not_after(cert));
                response_status(tls).await.map(|s| (s, expiry))
            }
        }
    }
}

/// Longest response head read before the final status line (interim `1xx` heads included).
const MAX_HEAD: usize = 16 * 1024;

/// The probe's request: `GET <path>` over HTTP/1.1, `Host` the customer hostname.
fn request_head(req: &ProbeRequest) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        req.path.as_str(),
        req.hostname
    )
}

fn io_error(what: &str, e: std::io::Error) -> (Outcome, String) {
    let outcome = if e.kind() == std::io::ErrorKind::InvalidData {
        Outcome::Protocol
    } else {
        Outcome::Connect
    };
    (outcome, format!("{what}: {e}"))
}

/// Sends the request `head` on the fresh connection and returns the final response's status
/// ([`response_status`]).
///
/// A minimal client rather than hyper's: a probe needs one request and one status, and the
/// hyper connection task spawned per probe, with its buffers, was a visible share of the probe
/// path's CPU (BENCHMARKS.md, issue 17).
async fn request<S>(mut io: S, head: &str) -> Result<u16, (Outcome, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    io.write_all(head.as_bytes())
        .await
        .map_err(|e| io_error("sending the request", e))?;
    io.flush()
        .await
        .map_err(|e| io_error("sending the request", e))?;
    response_status(io).await
}

/// The final response's status, from its status line; the headers after it and the body are
/// not read. Interim responses (`103 Early Hints`, a stray `100 Continue`) are skipped to the
/// final one.
async fn response_status<S>(mut io: S) -> Result<u16, (Outcome, String)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(512);
    // Where the response being read starts (after any interim responses).
    let mut from = 0;
    loop {
        if let Some(status) = final_status(&buf, &mut from)? {
            return Ok(status);
        }
        if buf.len() >= MAX_HEAD {
            return Err((
                Outcome::Protocol,
                format!("no final status line in the first {MAX_HEAD} bytes"),
            ));
        }
        // Read into the buffer's spare room: no copy, and no 1 KiB array in every probe's
        // future (which is allocated per probe).
        buf.reserve(1024);
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|e| io_error("reading the response", e))?;
        if n == 0 {
            return Err((
                Outcome::Connect,
                "the connection closed before a complete response head".to_owned(),
            ));
        }
    }
}

/// The final status in the response bytes read so far (`None`: read more). `from` is where the
/// current response starts; it moves past each complete interim (`1xx`) head.
fn final_status(buf: &[u8], from: &mut usize) -> Result<Option<u16>, (Outcome, String)> {
    loop {
        let rest = &buf[*from..];
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let status = status_line(&rest[..line_end])?;
        if !(100..200).contains(&status) || status == 101 {
            return Ok(Some(status));
        }
        // An interim response: skip its head (up to the blank line), then read the next.
        let Some(head_end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        *from += head_end + 4;
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn status_line(line: &[u8]) -> Result<u16, (Outcome, String)> {
    let malformed = || {
        (
            Outcome::Protocol,
            format!(
                "malformed status line {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            ),
        )
    };
    let mut parts = line.splitn(3, |b| *b == b' ');
    let version = parts.next().ok_or_else(malformed)?;
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(malformed());
    }
    let code = parts.next().ok_or_else(malformed)?;
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if status < 100 {
        return Err(malformed());
    }
    Ok(status)
}

/// Certificates' expiries, by certificate: an edge serves the same certificate to thousands of
/// probes, and parsing it (x509) on each was a visible share of an HTTPS probe's CPU.
#[derive(Default)]
struct Expiries(std::sync::Mutex<std::collections::HashMap<[u8; 64], Option<DateTime<Utc>>>>);

/// Certificates remembered at most (the map starts over when full).
const EXPIRIES_KEPT: usize = 4096;

impl Expiries {
    fn not_after(&self, cert: &CertificateDer<'_>) -> Option<DateTime<Utc>> {
        // The signature ends the DER: its last 64 bytes tell certificates apart (copied, not
        // allocated: this runs on every HTTPS probe).
        let der = cert.as_ref();
        let tail = &der[der.len().saturating_sub(64)..];
        let mut key = [0u8; 64];
        key[..tail.len()].copy_from_slice(tail);
        if let Some(known) = self.0.lock().ok()?.get(&key) {
            return *known;
        }
        let expiry = not_after(cert);
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= EXPIRIES_KEPT {
                map.clear();
            }
            map.insert(key, expiry);
        }
        expiry
    }
}

fn not_after(cert: &CertificateDer<'_>) -> Option<DateTime<Utc>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    DateTime::from_timestamp(parsed.validity().not_after.timestamp(), 0)
}

pub use tranche_core::address_policy::is_public;

#[async_trait::async_trait]
impl Prober for NetworkProber {
    async fn probe(&self, req: &ProbeRequest) -> ProbeResult {
        let at = Utc::now();
        let started = Instant::now();
        let result = tokio::time::timeout(req.timeout, self.run(req)).await;
        let took = started.elapsed();
        let latency_ms = took.as_millis().min(u128::from(u32::MAX)) as u32;
        let (outcome, status, cert_expires_at, error) = match result {
            Err(_) => (
                Outcome::Timeout,
                None,
                None,
                Some(format!("no response within {:?}", req.timeout)),
            ),
            Ok(Err((outcome, error))) => (outcome, None, None, Some(error)),
            Ok(Ok((status, expiry))) if req.expected.contains(status) => {
                (Outcome::Ok, Some(status), expiry, None)
            }
            Ok(Ok((status, expiry))) => (
                Outcome::HttpStatus,
                Some(status),
                expiry,
                Some(format!("status {status} is not in {}", req.expected)),
            ),
        };
        crate::metrics::METRICS.probe(
            req.cdn.as_str(),
            req.scheme.as_str(),
            outcome.as_str(),
            took,
        );
        ProbeResult {
            at,
            outcome,
            latency_ms,
            status,
            cert_expires_at,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status `request` reads when the server answers `response` (then closes).
    async fn answered(response: &'static [u8]) -> Result<u16, (Outcome, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut head = vec![0u8; 4096];
            let n = server.read(&mut head).await.unwrap();
            // Byte by byte: the reader must cope with a head split anywhere.
            for b in response {
                server.write_all(std::slice::from_ref(b)).await.unwrap();
            }
            drop(server);
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        let req = ProbeRequest {
            cdn: tranche_core::probe::Cdn::Primary,
            hostname: "app.example.test".into(),
            target: tranche_core::domain::ProbeTarget::parse("127.0.0.1:9").unwrap(),
            scheme: ProbeScheme::Http,
            path: tranche_core::domain::ProbePath::parse("/healthz").unwrap(),
            expected: tranche_core::domain::ExpectedStatuses::default(),
            timeout: std::time::Duration::from_secs(1),
        };
        let status = request(client, &request_head(&req)).await;
        let sent = serve.await.unwrap();
        assert!(
            sent.starts_with("GET /healthz HTTP/1.1\r\nHost: app.example.test\r\n")
                && sent.ends_with("Connection: close\r\n\r\n"),
            "{sent:?}"
        );
        status
    }

    #[tokio::test]
    async fn the_status_line_is_read_and_interim_responses_skipped() {
        assert_eq!(
            answered(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await,
            Ok(200)
        );
        assert_eq!(
            answered(b"HTTP/1.0 503 Service Unavailable\r\n\r\n").await,
            Ok(503)
        );
        assert_eq!(answered(b"HTTP/1.1 204\r\n\r\n").await, Ok(204));
        assert_eq!(
            answered(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
                .await,
            Ok(200)
        );
        let outcome = |r: Result<u16, (Outcome, String)>| r.map_err(|e| e.0);
        assert_eq!(
            outcome(answered(b"SSH-2.0-OpenSSH_9.2\r\n").await),
            Err(Outcome::Protocol)
        );
        assert_eq!(
            outcome(answered(b"HTTP/1.1 2000 OK\r\n\r\n").await),
            Err(Outcome::Protocol)
        );
        assert_eq!(
            outcome(answered(b"HTTP/1.1 20").await),
            Err(Outcome::Connect)
        );
        assert_eq!(outcome(answered(b"").await), Err(Outcome::Connect));
    }

    #[test]
    fn public_and_private_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "151.101.1.57", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
