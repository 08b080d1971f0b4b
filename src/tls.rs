//! The TLS crypto provider of the WeCom client: rustls' *ring* provider without the parts a
//! client that never authenticates itself cannot use, and without ChaCha20-Poly1305.
//!
//! attohttpc (vendored, `vendor/attohttpc/PATCHES.md`) builds its rustls configuration from
//! the process-default provider, which [`install`] sets before the first send. rustls' own
//! fallback, the whole *ring* provider, would link its private-key loaders as well: RSA,
//! ECDSA and Ed25519 signing, used only to present a certificate of one's own, which the relay
//! never does (53 kB of the x86_64 static binary, #18). Verification is untouched: the same
//! key exchange groups (X25519, P-256, P-384), signature algorithms (ECDSA P-256/P-384,
//! Ed25519, RSA PKCS#1 and PSS) and random source as rustls' default, and its cipher suites
//! less ChaCha20-Poly1305 (see [`provider`]).

use std::sync::Arc;

use rustls::crypto::ring as ring_provider;
use rustls::crypto::{
    CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::SigningKey;
use rustls::SignatureScheme;
use webpki::ring as algs;

/// Makes [`provider`] the process default, once; later calls change nothing.
pub fn install() {
    // Err means a provider is installed already: ours, by an earlier call.
    let _ = provider().install_default();
}

/// rustls' *ring* provider (`rustls::crypto::ring::default_provider()`) without the
/// ChaCha20-Poly1305 cipher suites, with a key provider that loads no keys. Built from the
/// parts, not from `default_provider()`: a reference to that one keeps its key provider in
/// the binary.
pub fn provider() -> CryptoProvider {
    use ring_provider::{cipher_suite as cs, kx_group};
    CryptoProvider {
        // rustls' DEFAULT_CIPHER_SUITES, in its order, less the ChaCha20-Poly1305 ones: ring's
        // ChaCha20-Poly1305 code is 57 kB of the x86_64 binary (#18), and AES-GCM is what
        // every server rustls can talk to offers (TLS_AES_128_GCM_SHA256 is mandatory in TLS
        // 1.3, RFC 8446 section 9.1; rustls' TLS 1.2 suites are ECDHE with AES-GCM or
        // ChaCha20, and no server configuration in use offers only the latter).
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        // rustls' DEFAULT_KX_GROUPS, in its order.
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &SystemRandom,
        key_provider: &NoClientKeys,
    }
}

/// rustls' `SUPPORTED_SIG_ALGS` for *ring* (private there), entry for entry.
static SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        algs::ECDSA_P256_SHA256,
        algs::ECDSA_P256_SHA384,
        algs::ECDSA_P384_SHA256,
        algs::ECDSA_P384_SHA384,
        algs::ED25519,
        algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        algs::RSA_PKCS1_2048_8192_SHA256,
        algs::RSA_PKCS1_2048_8192_SHA384,
        algs::RSA_PKCS1_2048_8192_SHA512,
        algs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        // For TLS 1.2 the curve is not fixed by the scheme; for TLS 1.3 it is.
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[algs::ECDSA_P384_SHA384, algs::ECDSA_P256_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256],
        ),
        (SignatureScheme::ED25519, &[algs::ED25519]),
        (SignatureScheme::RSA_PSS_SHA512, &[algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY]),
        (SignatureScheme::RSA_PSS_SHA384, &[algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY]),
        (SignatureScheme::RSA_PSS_SHA256, &[algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY]),
        (SignatureScheme::RSA_PKCS1_SHA512, &[algs::RSA_PKCS1_2048_8192_SHA512]),
        (SignatureScheme::RSA_PKCS1_SHA384, &[algs::RSA_PKCS1_2048_8192_SHA384]),
        (SignatureScheme::RSA_PKCS1_SHA256, &[algs::RSA_PKCS1_2048_8192_SHA256]),
    ],
};

/// The operating system's random source through *ring*, as rustls' own provider does.
#[derive(Debug)]
struct SystemRandom;

impl SecureRandom for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        use ring::rand::SecureRandom as _;
        ring::rand::SystemRandom::new().fill(buf).map_err(|_| GetRandomFailed)
    }
}

/// The key provider of a client without a certificate of its own: rustls asks it only to
/// load a private key for client authentication or a server, neither of which happens here.
#[derive(Debug)]
struct NoClientKeys;

impl KeyProvider for NoClientKeys {
    fn load_private_key(
        &self,
        _key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        Err(rustls::Error::General("weixin-robot loads no TLS private keys".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same suites (less ChaCha20-Poly1305), groups and algorithms as rustls' default
    /// *ring* provider; no keys.
    #[test]
    fn the_provider_negotiates_what_rustls_default_does() {
        let ours = provider();
        let theirs = ring_provider::default_provider();
        let suites =
            |p: &CryptoProvider| p.cipher_suites.iter().map(|s| s.suite()).collect::<Vec<_>>();
        let aes_gcm: Vec<_> = suites(&theirs)
            .into_iter()
            .filter(|s| !format!("{s:?}").contains("CHACHA20"))
            .collect();
        assert_eq!(aes_gcm.len(), 6);
        assert_eq!(suites(&ours), aes_gcm);
        let groups = |p: &CryptoProvider| p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>();
        assert_eq!(groups(&ours), groups(&theirs));
        assert_eq!(
            format!("{:?}", ours.signature_verification_algorithms),
            format!("{:?}", theirs.signature_verification_algorithms)
        );
        assert!(ours
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(Vec::new().into()))
            .is_err());
        install();
        install();
        assert!(CryptoProvider::get_default().is_some());
    }
}
