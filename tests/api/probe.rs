//! The network prober against local edges: every outcome class, SNI/Host, certificate expiry,
//! and the private-address guard.

use std::time::Duration;

use tranche::demo::edge::{Behaviour, FakeEdge, TestCa};
use tranche::prober::{NetworkProber, TlsOptions};
use tranche_actors::ports::Prober;
use tranche_core::domain::{ExpectedStatuses, ProbePath, ProbeScheme, ProbeTarget};
use tranche_core::probe::{Outcome, ProbeRequest};

fn request(hostname: &str, edge: &FakeEdge, scheme: ProbeScheme) -> ProbeRequest {
    ProbeRequest {
        target: ProbeTarget::parse(&edge.addr().to_string()).unwrap(),
        ..request_to(hostname, scheme)
    }
}

#[tokio::test]
async fn classifies_every_outcome() {
    let ca = TestCa::new(&["app.example.test"]).unwrap();
    let https = FakeEdge::https(&ca).await.unwrap();
    let http = FakeEdge::http().await.unwrap();
    let prober = NetworkProber::new(std::slice::from_ref(&ca.ca), true).unwrap();

    let ok = prober
        .probe(&request("app.example.test", &https, ProbeScheme::Https))
        .await;
    assert_eq!(ok.outcome, Outcome::Ok, "{ok:?}");
    assert_eq!(ok.status, Some(200));
    let expiry = ok.cert_expires_at.expect("certificate expiry recorded");
    assert!(expiry > chrono::Utc::now());

    let plain = prober
        .probe(&request("app.example.test", &http, ProbeScheme::Http))
        .await;
    assert_eq!(
        (plain.outcome, plain.status, plain.cert_expires_at),
        (Outcome::Ok, Some(200), None)
    );

    https.set(Behaviour::Status(503));
    let bad = prober
        .probe(&request("app.example.test", &https, ProbeScheme::Https))
        .await;
    assert_eq!((bad.outcome, bad.status), (Outcome::HttpStatus, Some(503)));

    https.set(Behaviour::Hang);
    let hang = prober
        .probe(&request("app.example.test", &https, ProbeScheme::Https))
        .await;
    assert_eq!(hang.outcome, Outcome::Timeout, "{hang:?}");
    assert!(hang.latency_ms >= 450, "{hang:?}");

    https.set(Behaviour::Refuse);
    // The edge stops listening asynchronously; poll until connections are refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let refused = prober
            .probe(&request("app.example.test", &https, ProbeScheme::Https))
            .await;
        if refused.outcome == Outcome::Connect {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    https.set(Behaviour::Healthy);
    // A hostname the edge's certificate does not cover is a TLS failure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let wrong = loop {
        let r = prober
            .probe(&request("other.example.test", &https, ProbeScheme::Https))
            .await;
        if r.outcome != Outcome::Connect || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(wrong.outcome, Outcome::Tls, "{wrong:?}");

    // An edge answering but with an unexpected status set.
    let mut strict = request("app.example.test", &http, ProbeScheme::Http);
    strict.expected = ExpectedStatuses::parse("204").unwrap();
    assert_eq!(prober.probe(&strict).await.outcome, Outcome::HttpStatus);
}

#[tokio::test]
async fn private_targets_are_blocked_unless_allowed() {
    let http = FakeEdge::http().await.unwrap();
    let prober = NetworkProber::new(&[], false).unwrap();
    let blocked = prober
        .probe(&request("app.example.test", &http, ProbeScheme::Http))
        .await;
    assert_eq!(blocked.outcome, Outcome::Blocked);
    assert_eq!(http.requests(), 0, "no connection was made");
}

#[tokio::test]
async fn every_probe_uses_a_new_connection() {
    let http = FakeEdge::http().await.unwrap();
    let prober = NetworkProber::new(&[], true).unwrap();
    for _ in 0..5 {
        assert_eq!(
            prober
                .probe(&request("app.example.test", &http, ProbeScheme::Http))
                .await
                .outcome,
            Outcome::Ok
        );
    }
    assert_eq!(http.requests(), 5);
    assert_eq!(http.connections(), 5, "one TCP connection per probe");
}

/// The shared local DNS server with these A records.
async fn local_dns(records: &[(&str, std::net::Ipv4Addr)]) -> std::net::SocketAddr {
    let dns = crate::helpers::LocalDns::start().await;
    for (name, ip) in records {
        dns.set(name, vec![crate::helpers::DnsAnswer::A(*ip)]);
    }
    let addr = dns.addr;
    std::mem::forget(dns); // its task lives as long as the test runtime
    addr
}

#[tokio::test]
async fn edge_hostnames_are_resolved_and_dns_failures_classified() {
    let http = FakeEdge::http().await.unwrap();
    let dns = local_dns(&[("edge.cdn.test", std::net::Ipv4Addr::LOCALHOST)]).await;
    let prober = NetworkProber::new(&[], true)
        .unwrap()
        .with_nameservers(&[dns])
        .unwrap();

    let mut req = request("app.example.test", &http, ProbeScheme::Http);
    req.target = ProbeTarget::parse(&format!("edge.cdn.test:{}", http.addr().port())).unwrap();
    let ok = prober.probe(&req).await;
    assert_eq!(ok.outcome, Outcome::Ok, "{ok:?}");

    req.target = ProbeTarget::parse(&format!("missing.cdn.test:{}", http.addr().port())).unwrap();
    let missing = prober.probe(&req).await;
    assert_eq!(missing.outcome, Outcome::Dns, "{missing:?}");

    // A name resolving to loopback is refused when private targets are not allowed.
    let strict = NetworkProber::new(&[], false)
        .unwrap()
        .with_nameservers(&[dns])
        .unwrap();
    req.target = ProbeTarget::parse(&format!("edge.cdn.test:{}", http.addr().port())).unwrap();
    assert_eq!(strict.probe(&req).await.outcome, Outcome::Blocked);
}

#[tokio::test]
async fn https_probes_succeed_with_every_tls_option() {
    let ca = TestCa::new(&["app.example.test"]).unwrap();
    let https = FakeEdge::https(&ca).await.unwrap();
    let mut probes = 0;
    for resumption in [true, false] {
        for reuse_key_share in [true, false] {
            let options = TlsOptions {
                resumption,
                reuse_key_share,
            };
            let prober =
                NetworkProber::with_tls(std::slice::from_ref(&ca.ca), true, options).unwrap();
            // The first probe is a full handshake; with resumption the next ones resume.
            for _ in 0..3 {
                let r = prober
                    .probe(&request("app.example.test", &https, ProbeScheme::Https))
                    .await;
                assert_eq!(
                    (r.outcome, r.status),
                    (Outcome::Ok, Some(200)),
                    "{options:?}: {r:?}"
                );
                assert!(r.cert_expires_at.is_some(), "{options:?}: {r:?}");
                probes += 1;
            }
        }
    }
    assert_eq!(https.requests(), probes);
    assert_eq!(https.connections(), probes, "one TCP connection per probe");
}

/// The X25519 key shares of the ClientHellos that `count` probes send to a server that reads
/// each connection's first bytes and hangs up.
async fn key_shares(options: TlsOptions, count: usize) -> Vec<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = ProbeTarget::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    let tap = tokio::spawn(async move {
        let mut shares = Vec::new();
        while shares.len() < count {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut hello = Vec::new();
            // The ClientHello is one record: its header gives its length.
            while hello.len() < 5
                || hello.len() < 5 + usize::from(u16::from_be_bytes([hello[3], hello[4]]))
            {
                let mut chunk = [0u8; 2048];
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed inside the ClientHello");
                hello.extend_from_slice(&chunk[..n]);
            }
            // key_share entry: group x25519 (0x001d), key length 32, the key.
            let at = hello
                .windows(4)
                .position(|w| w == [0x00, 0x1d, 0x00, 0x20])
                .expect("an X25519 key share in the ClientHello");
            shares.push(hello[at + 4..at + 36].to_vec());
        }
        shares
    });
    let prober = NetworkProber::with_tls(&[], true, options).unwrap();
    for _ in 0..count {
        let mut req = ProbeRequest {
            target: target.clone(),
            ..request_to("app.example.test", ProbeScheme::Https)
        };
        req.timeout = Duration::from_secs(2);
        let r = prober.probe(&req).await;
        assert_ne!(r.outcome, Outcome::Ok, "the tap does not speak TLS: {r:?}");
    }
    tap.await.unwrap()
}

fn request_to(hostname: &str, scheme: ProbeScheme) -> ProbeRequest {
    ProbeRequest {
        cdn: tranche_core::probe::Cdn::Primary,
        hostname: hostname.to_owned(),
        target: ProbeTarget::parse("127.0.0.1:9").unwrap(),
        scheme,
        path: ProbePath::parse("/healthz").unwrap(),
        expected: ExpectedStatuses::default(),
        timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn the_key_share_is_reused_only_when_configured() {
    let reused = key_shares(TlsOptions::default(), 3).await;
    assert!(
        reused.windows(2).all(|w| w[0] == w[1]),
        "one key share within its 10 s window: {reused:?}"
    );
    let fresh = key_shares(
        TlsOptions {
            reuse_key_share: false,
            ..TlsOptions::default()
        },
        3,
    )
    .await;
    assert!(
        fresh.windows(2).all(|w| w[0] != w[1]),
        "a key share per handshake: {fresh:?}"
    );
    assert_ne!(fresh[0], reused[0]);
}
