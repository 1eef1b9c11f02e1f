//! Which TLSA records DANE for SMTP can use (RFC 7672 §3.1): DANE-TA(2)
//! and DANE-EE(3), of a known selector and matching type, with data of
//! the digest's length. PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP
//! (§3.1.3): no client could know which CAs the server's operator meant.

use crate::delivery::dns::Tlsa;

/// What a usable record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// DANE-TA(2): a certificate of the chain, a trust anchor the server's
    /// certificate must chain to (with its name checked).
    TrustAnchor,
    /// DANE-EE(3): the server's own certificate or key; names and
    /// expiry do not matter (RFC 7672 §3.1.1).
    EndEntity,
}

/// Which part of a certificate is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// 0: the whole certificate (DER).
    Certificate,
    /// 1: its SubjectPublicKeyInfo (DER).
    PublicKey,
}

/// How the selected part is compared with the record's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// 0: byte for byte.
    Exact,
    /// 1: its SHA-256 digest.
    Sha256,
    /// 2: its SHA-512 digest.
    Sha512,
}

/// A TLSA record DANE can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsableTlsa {
    pub usage: Usage,
    pub selector: Selector,
    pub matching: Matching,
    pub data: Vec<u8>,
}

impl UsableTlsa {
    /// The record as DANE uses it; `None` when it is unusable (a PKIX
    /// usage, an unknown selector or matching type, data of the wrong
    /// length), which RFC 7672 §3.1 says to ignore.
    pub fn from_record(r: &Tlsa) -> Option<UsableTlsa> {
        let usage = match r.usage {
            2 => Usage::TrustAnchor,
            3 => Usage::EndEntity,
            _ => return None,
        };
        let selector = match r.selector {
            0 => Selector::Certificate,
            1 => Selector::PublicKey,
            _ => return None,
        };
        let (matching, len_ok) = match r.matching {
            0 => (Matching::Exact, !r.data.is_empty()),
            1 => (Matching::Sha256, r.data.len() == 32),
            2 => (Matching::Sha512, r.data.len() == 64),
            _ => return None,
        };
        len_ok.then(|| UsableTlsa {
            usage,
            selector,
            matching,
            data: r.data.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlsa(usage: u8, selector: u8, matching: u8, len: usize) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: vec![7; len],
        }
    }

    #[test]
    fn only_dane_usages_with_known_parameters_are_usable() {
        let usable = |t: Tlsa| UsableTlsa::from_record(&t);
        let ee = usable(tlsa(3, 1, 1, 32)).unwrap();
        assert_eq!(
            (ee.usage, ee.selector, ee.matching),
            (Usage::EndEntity, Selector::PublicKey, Matching::Sha256)
        );
        let ta = usable(tlsa(2, 0, 2, 64)).unwrap();
        assert_eq!(
            (ta.usage, ta.selector, ta.matching),
            (Usage::TrustAnchor, Selector::Certificate, Matching::Sha512)
        );
        assert!(usable(tlsa(3, 0, 0, 300)).is_some());
        // PKIX-TA and PKIX-EE are unusable for SMTP, whatever they hold.
        assert!(usable(tlsa(0, 1, 1, 32)).is_none());
        assert!(usable(tlsa(1, 1, 1, 32)).is_none());
        // Unknown usage, selector or matching type; data that cannot be
        // the digest it says it is.
        assert!(usable(tlsa(4, 1, 1, 32)).is_none());
        assert!(usable(tlsa(3, 2, 1, 32)).is_none());
        assert!(usable(tlsa(3, 1, 3, 32)).is_none());
        assert!(usable(tlsa(3, 1, 1, 31)).is_none());
        assert!(usable(tlsa(3, 1, 2, 32)).is_none());
        assert!(usable(tlsa(3, 0, 0, 0)).is_none());
    }
}
