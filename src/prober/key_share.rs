//! The probes' TLS key exchange: X25519, with the client's key share reused for a few seconds.
//!
//! Every TLS 1.3 handshake, resumed or not, does an X25519 key exchange (rustls offers only
//! `psk_dhe_ke`): one key generation and one agreement. With ring's X25519 that was about 64 µs
//! of a probe's ~320 µs of CPU (BENCHMARKS.md, issue 17). This group uses aws-lc's X25519
//! (an agreement in ~27 µs, a key generation in ~8 µs, against ring's ~40 µs and ~23 µs on the
//! same machine) and, by default, keeps one key pair for [`REUSE_FOR`] before generating the
//! next, so a probe pays for the agreement alone.
//!
//! **The trade-off.** A reused key share weakens forward secrecy within its window: someone who
//! recorded the probes' traffic *and* later read the prober's memory inside those seconds could
//! decrypt the probes made with that key. A probe carries nothing secret (a `GET` of a health
//! path with a `Host` header, and the response's status), the window is short, and X25519 is
//! designed to be safe with static keys (RFC 7748; the all-zero shared secret of a low-order
//! peer point is refused). Operators who want a fresh key share per handshake set
//! `probe_tls_reuse_key_share = false` ([`FRESH`]).
//!
//! The agreement and the peer key validation are aws-lc's; rustls uses this group for TLS 1.2
//! ECDHE too. The handshakes' random values come from aws-lc as well ([`AwsLcRandom`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::agreement;
use rustls::crypto::{
    ActiveKeyExchange, GetRandomFailed, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// aws-lc's random generator for the handshakes' random values (the client random, the
/// session id): a CSPRNG in user space, seeded from the OS, where ring's asks the kernel
/// (`getrandom`) for every value, two system calls per probe.
#[derive(Debug)]
pub struct AwsLcRandom;

impl SecureRandom for AwsLcRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        aws_lc_rs::rand::fill(buf).map_err(|_| GetRandomFailed)
    }
}

/// How long a key share is reused by [`REUSED`].
pub const REUSE_FOR: Duration = Duration::from_secs(10);

/// X25519 whose key share is reused for [`REUSE_FOR`] (the default for probes).
pub static REUSED: X25519 = X25519 {
    reuse_for: REUSE_FOR,
    current: Mutex::new(None),
};

/// X25519 with a fresh key share for every handshake.
pub static FRESH: X25519 = X25519 {
    reuse_for: Duration::ZERO,
    current: Mutex::new(None),
};

/// An X25519 key exchange group (see the module docs).
pub struct X25519 {
    /// Zero: a new key pair for every handshake.
    reuse_for: Duration,
    /// The key pair being reused, and when it was made.
    current: Mutex<Option<(Instant, Arc<KeyPair>)>>,
}

struct KeyPair {
    private: agreement::PrivateKey,
    public: [u8; 32],
}

impl KeyPair {
    fn generate() -> Result<Self, Error> {
        let failed = || Error::General("X25519 key generation failed".into());
        let private = agreement::PrivateKey::generate(&agreement::X25519).map_err(|_| failed())?;
        let public = private.compute_public_key().map_err(|_| failed())?;
        Ok(Self {
            private,
            public: public.as_ref().try_into().map_err(|_| failed())?,
        })
    }
}

impl X25519 {
    /// The key pair for the next handshake: the current one while it is younger than
    /// `reuse_for`, else a new one.
    fn key_pair(&self, now: Instant) -> Result<Arc<KeyPair>, Error> {
        if self.reuse_for.is_zero() {
            return KeyPair::generate().map(Arc::new);
        }
        // A poisoned lock only means a panic elsewhere while it was held; the slot is still a
        // valid key pair (or none).
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some((made, pair)) if now.saturating_duration_since(*made) < self.reuse_for => {
                Ok(pair.clone())
            }
            _ => {
                let pair = Arc::new(KeyPair::generate()?);
                *current = Some((now, pair.clone()));
                Ok(pair)
            }
        }
    }
}

impl fmt::Debug for X25519 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519")
            .field("reuse_for", &self.reuse_for)
            .finish()
    }
}

impl SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        Ok(Box::new(Exchange(self.key_pair(Instant::now())?)))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// One handshake's key exchange.
struct Exchange(Arc<KeyPair>);

impl ActiveKeyExchange for Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        if peer.len() != 32 {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        // aws-lc refuses a peer point whose shared secret is all zeros (a low-order point).
        agreement::agree(
            &self.0.private,
            peer,
            Error::from(PeerMisbehaved::InvalidKeyShare),
            |secret| Ok(SharedSecret::from(secret)),
        )
    }

    fn pub_key(&self) -> &[u8] {
        &self.0.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(reuse_for: Duration) -> X25519 {
        X25519 {
            reuse_for,
            current: Mutex::new(None),
        }
    }

    #[test]
    fn both_sides_agree_and_ring_agrees_with_aws_lc() {
        // Our side against ring's X25519 (the provider's own group) as the peer.
        let ours = REUSED.start().unwrap();
        let theirs = rustls::crypto::ring::kx_group::X25519.start().unwrap();
        let their_pub = theirs.pub_key().to_vec();
        let our_pub = ours.pub_key().to_vec();
        let a = ours.complete(&their_pub).unwrap();
        let b = theirs.complete(&our_pub).unwrap();
        assert_eq!(a.secret_bytes(), b.secret_bytes());
        assert_eq!(a.secret_bytes().len(), 32);
    }

    #[test]
    fn a_key_share_is_reused_within_its_window_only() {
        let g = group(Duration::from_secs(10));
        let t0 = Instant::now();
        let first = g.key_pair(t0).unwrap().public;
        assert_eq!(
            g.key_pair(t0 + Duration::from_secs(9)).unwrap().public,
            first
        );
        let next = g.key_pair(t0 + Duration::from_secs(10)).unwrap().public;
        assert_ne!(next, first, "a new key share once the window has passed");
        assert_eq!(
            g.key_pair(t0 + Duration::from_secs(11)).unwrap().public,
            next
        );

        let fresh = group(Duration::ZERO);
        assert_ne!(
            fresh.key_pair(t0).unwrap().public,
            fresh.key_pair(t0).unwrap().public
        );
    }

    #[test]
    fn bad_peer_key_shares_are_refused() {
        for peer in [vec![0u8; 31], vec![0u8; 33], vec![0u8; 32]] {
            // 32 zero bytes is the u-coordinate of a low-order point: an all-zero secret.
            let err = REUSED.start().unwrap().complete(&peer).err();
            assert_eq!(
                err,
                Some(Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)),
                "{} bytes",
                peer.len()
            );
        }
    }
}
