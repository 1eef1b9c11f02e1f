//! DKIM signing (RFC 6376; Ed25519 by RFC 8463): relaxed/relaxed
//! canonicalisation, `rsa-sha256` and `ed25519-sha256`, with OpenSSL
//! (already linked for TLS) doing the hashing and the signatures.
//!
//! A queue signs each message once, when it is queued, with the key of
//! its `From:` domain or of a parent domain ([`DkimSigner`] in
//! [`crate::QueueOptions::dkim`]): the signed bytes are the ones stored,
//! so every retry sends the same bytes and the spool's checksum covers
//! the signature.

mod canon;
pub(crate) mod key;
mod record;
mod signature;
mod signer;

pub use key::{
    generate_pem, Algorithm, KeyError, SigningKey, DEFAULT_HEADERS, MIN_RSA_BITS,
    RECOMMENDED_RSA_BITS,
};
pub use record::{
    check_all, check_published, check_published_with, zone_line, KeyRecord, Lookup, Published,
};
pub use signer::{DkimSigner, SignError};
