//! Local fake CDN edges: HTTP or HTTPS servers on loopback whose behaviour can be switched at
//! run time (healthy, an error status, hanging, refusing connections). `tranche demo` breaks
//! one to show a storm; the tests and the probe benchmark use them as the CDNs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How an edge answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 OK`.
    Healthy,
    /// This status (e.g. 503).
    Status(u16),
    /// Accepts the connection and never answers.
    Hang,
    /// Not listening: connections are refused.
    Refuse,
}

/// A certificate authority for fake edges, and a server certificate it signed.
pub struct TestCa {
    /// The CA certificate to trust (pass to the prober).
    pub ca: CertificateDer<'static>,
    /// TLS configuration serving a certificate valid for the given names.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A fresh CA and a server certificate for `names` (wildcards allowed, e.g. `*.demo.test`).
    pub fn new(names: &[&str]) -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tranche test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf_params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )?;
        // Like a real CDN edge, support resumption (stateless TLS 1.3 tickets).
        server.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Self {
            ca: ca_cert.der().clone(),
            server: Arc::new(server),
        })
    }
}

/// A running fake edge on 127.0.0.1.
pub struct FakeEdge {
    addr: SocketAddr,
    behaviour: watch::Sender<Behaviour>,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    /// Requests still to be answered 503 whatever the behaviour (a blip of exactly N probes).
    fail_next: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEdge {
    /// Plain HTTP edge.
    pub async fn http() -> std::io::Result<Self> {
        Self::start(None).await
    }

    /// HTTPS edge serving `ca`'s server certificate.
    pub async fn https(ca: &TestCa) -> std::io::Result<Self> {
        Self::start(Some(TlsAcceptor::from(ca.server.clone()))).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> std::io::Result<Self> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let (behaviour, watcher) = watch::channel(Behaviour::Healthy);
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let fail_next = Arc::new(AtomicU64::new(0));
        let counters = Counters {
            requests: requests.clone(),
            connections: connections.clone(),
            fail_next: fail_next.clone(),
        };
        let task = tokio::spawn(serve(listener, addr, tls, watcher, counters));
        Ok(Self {
            addr,
            behaviour,
            requests,
            connections,
            fail_next,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches how the edge answers from now on.
    pub fn set(&self, behaviour: Behaviour) {
        self.behaviour.send_replace(behaviour);
    }

    /// Answers the next `n` requests with 503, then behaves as set again: a blip of exactly
    /// `n` probes.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Requests answered or held so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FakeEdge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// An edge's shared counters.
#[derive(Clone)]
struct Counters {
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    fail_next: Arc<AtomicU64>,
}

async fn serve(
    mut listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    mut watcher: watch::Receiver<Behaviour>,
    counters: Counters,
) {
    loop {
        if *watcher.borrow() == Behaviour::Refuse {
            drop(listener);
            while *watcher.borrow_and_update() == Behaviour::Refuse {
                if watcher.changed().await.is_err() {
                    return;
                }
            }
            listener = loop {
                match bind(addr) {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let behaviour = watcher.clone();
                let tls = tls.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                answer(stream, behaviour, counters).await;
                            }
                        }
                        None => answer(stream, behaviour, counters).await,
                    }
                });
            }
            _ = watcher.changed() => {}
        }
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    behaviour: watch::Receiver<Behaviour>,
    counters: Counters,
) {
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf[read..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => read += n,
        }
        if read == buf.len() {
            return;
        }
    }
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let blip = counters
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let current = if blip {
        Behaviour::Status(503)
    } else {
        *behaviour.borrow()
    };
    let status = match current {
        Behaviour::Healthy => 200,
        Behaviour::Status(s) => s,
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        Behaviour::Refuse => return,
    };
    let response =
        format!("HTTP/1.1 {status} Fake\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
