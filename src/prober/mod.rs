//! The network prober: one HTTP(S) request to a customer hostname *through* one CDN.
//!
//! Each probe resolves the CDN's target (hickory-resolver; an IP literal skips resolution),
//! opens a **new TCP connection** to it (a dead edge must not hide behind a pooled connection),
//! does TLS with SNI set to the customer hostname, sends `GET <path>` with `Host` set to the
//! customer hostname over HTTP/1.1, and classifies the outcome from the response head (the body
//! is not read). TLS configuration, including its session cache (resumption keeps probes
//! cheap), is shared by all probes. The certificate's expiry is recorded for HTTPS.
//!
//! Targets that resolve to loopback, private, link-local or otherwise non-public addresses are
//! refused (`blocked`) unless the operator allows them (`probe_allow_private`), so customers
//! cannot point Tranche at the operator's own network.

use crate::resolver::resolver;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
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

/// Probes over the network. Cheap to clone behind an `Arc`; share one per node.
pub struct NetworkProber {
    tls: TlsConnector,
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
        Self::with_resumption(extra_roots, allow_private, true)
    }

    /// As [`NetworkProber::new`]; `resumption: false` makes every HTTPS probe a full handshake
    /// with certificate verification (for benchmarks that compare probers without it).
    pub fn with_resumption(
        extra_roots: &[CertificateDer<'static>],
        allow_private: bool,
        resumption: bool,
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
        let provider = Arc::new(provider);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Resumption skips the certificate chain verification and key exchange that dominate a
        // probe's cost. Every probed hostname keeps its session (rustls' default holds 256).
        config.resumption = if resumption {
            rustls::client::Resumption::in_memory_sessions(SESSION_CACHE)
        } else {
            rustls::client::Resumption::disabled()
        };
        let resolver = resolver(&[], None)?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
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
                let lookup = resolver
                    .lookup_ip(name.as_str())
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
        match req.scheme {
            ProbeScheme::Http => request(TokioIo::new(tcp), req).await.map(|s| (s, None)),
            ProbeScheme::Https => {
                let name = ServerName::try_from(req.hostname.clone())
                    .map_err(|e| (Outcome::Tls, format!("invalid SNI name: {e}")))?;
                let tls = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| (Outcome::Tls, format!("TLS handshake: {e}")))?;
                let expiry = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| not_after(cert));
                request(TokioIo::new(tls), req).await.map(|s| (s, expiry))
            }
        }
    }
}

/// Sends the request on a fresh connection and returns the response status.
async fn request<S>(io: TokioIo<S>, req: &ProbeRequest) -> Result<u16, (Outcome, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| (Outcome::Protocol, format!("HTTP handshake: {e}")))?;
    // The connection task ends when the response is dropped (Connection: close).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(req.path.as_str())
        .header(hyper::header::HOST, &req.hostname)
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| (Outcome::Protocol, format!("building request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| (classify_hyper(&e), format!("HTTP: {e}")))?;
    Ok(response.status().as_u16())
}

fn classify_hyper(e: &hyper::Error) -> Outcome {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        Outcome::Connect
    } else {
        Outcome::Protocol
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
