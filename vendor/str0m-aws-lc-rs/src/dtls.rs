//! DTLS implementation using dimpl with AWS-LC-RS backend.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use str0m_proto::crypto::CryptoError;
use str0m_proto::crypto::DtlsVersion;
use str0m_proto::crypto::dtls::ProtocolVersion;
use str0m_proto::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider};

// ============================================================================
// DTLS Provider Implementation
// ============================================================================

thread_local! {
    /// Parloir patch 3: the seed of the next DTLS instance's generator on this thread, once
    /// [`repeatable_dtls`] was called here.
    static NEXT_SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Parloir patch 3: makes the DTLS instances made on this thread from now on seed dimpl's
/// generator of non-cryptographic randomness (the jitter of the handshake's retransmission
/// timers, the hello messages' random bytes, record nonces) from `seed`, each instance the
/// next value of a sequence, instead of from the system: a simulation's handshakes then
/// retransmit and finish at the same instants at every run. Keys and signatures still come
/// from the system's generator. For simulations and benches, whose runs must repeat; a
/// server never calls it.
pub fn repeatable_dtls(seed: u64) {
    NEXT_SEED.with(|next| next.set(Some(seed)));
}

/// The seed of a new instance's generator on this thread, after [`repeatable_dtls`].
fn next_seed() -> Option<u64> {
    NEXT_SEED.with(|next| {
        let seed = next.get()?;
        // splitmix64's step: each instance its own seed.
        next.set(Some(seed.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        Some(seed)
    })
}

#[derive(Debug)]
pub(super) struct AwsLcRsDtlsProvider;

impl DtlsProvider for AwsLcRsDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        // Use dimpl's rcgen-based certificate generation (with aws-lc-rs backend)
        dimpl::certificate::generate_self_signed_certificate()
            .ok()
            .map(|cert| DtlsCert {
                certificate: cert.certificate,
                private_key: cert.private_key,
            })
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let dimpl_cert = dimpl::DtlsCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };

        // Create a default dimpl Config with AWS-LC-RS crypto provider
        // ICE verifies return routability before DTLS, making server cookies redundant.
        let mut builder = dimpl::Config::builder().use_server_cookie(false);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        if self.is_test() {
            // We need the DTLS impl to be deterministic for the BWE tests.
            builder = builder.dangerously_set_rng_seed(42);
        } else if let Some(seed) = next_seed() {
            builder = builder.dangerously_set_rng_seed(seed);
        }

        let config = builder
            .build()
            .map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {}", e)))?;

        let config = Arc::new(config);
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, dimpl_cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, dimpl_cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, dimpl_cert, now),
            _ => {
                return Err(CryptoError::Other(format!(
                    "Unsupported DTLS version: {dtls_version}"
                )));
            }
        };

        Ok(Box::new(AwsLcRsDtlsInstance { dtls }))
    }
}

// ============================================================================
// DTLS Instance Wrapper
// ============================================================================

struct AwsLcRsDtlsInstance {
    dtls: dimpl::Dtls,
}

impl std::fmt::Debug for AwsLcRsDtlsInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsDtlsInstance").finish()
    }
}

impl DtlsInstance for AwsLcRsDtlsInstance {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.dtls.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

#[cfg(test)]
mod parloir_tests {
    use std::time::Duration;

    use super::*;

    /// How long each of `n` new clients made on a fresh thread (seeded with `seed`, if any)
    /// waits before sending its first flight again.
    fn first_retransmissions(seed: Option<u64>, n: usize) -> Vec<Duration> {
        std::thread::spawn(move || {
            if let Some(seed) = seed {
                repeatable_dtls(seed);
            }
            let provider = AwsLcRsDtlsProvider;
            let cert = provider.generate_certificate().expect("a certificate");
            let now = Instant::now();
            (0..n)
                .map(|_| {
                    let mut dtls = provider
                        .new_dtls(&cert, now, DtlsVersion::Dtls12, None)
                        .expect("an instance");
                    dtls.set_active(true);
                    dtls.handle_timeout(now).expect("a start");
                    let mut buf = vec![0; 2048];
                    let mut sent = 0;
                    loop {
                        match dtls.poll_output(&mut buf) {
                            DtlsOutput::Packet(_) => sent += 1,
                            DtlsOutput::Timeout(t) if sent > 0 => return t - now,
                            DtlsOutput::Timeout(_) => panic!("no hello sent"),
                            _ => {}
                        }
                    }
                })
                .collect()
        })
        .join()
        .expect("the thread")
    }

    // Parloir patch 3.
    #[test]
    fn a_seeded_thread_repeats_its_handshake_timers() {
        let seeded = first_retransmissions(Some(5), 4);
        assert_eq!(first_retransmissions(Some(5), 4), seeded, "the same seed");
        // The retransmission timeout with its jitter: each instance its own seed, another
        // seed other draws, and without a seed the system's.
        let distinct = |v: &[Duration]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v.len()
        };
        assert_eq!(
            distinct(&seeded),
            4,
            "each instance its own draw: {seeded:?}"
        );
        assert_ne!(first_retransmissions(Some(6), 4), seeded, "another seed");
        let random = first_retransmissions(None, 4);
        assert_ne!(first_retransmissions(None, 4), random, "unseeded");
    }
}
