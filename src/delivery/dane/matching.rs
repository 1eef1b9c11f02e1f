//! Matching a server's certificate chain against its usable TLSA records
//! (RFC 6698 §2.1, RFC 7672 §3.1).
//!
//! DANE-EE(3) matches the server's own certificate (or key), and nothing
//! else is checked: not its names, not its expiry, not who signed it
//! (RFC 7672 §3.1.1). DANE-TA(2) matches a certificate of the chain the
//! server sent (or, for `2 0 0`, the certificate the record holds); the
//! server's certificate must then chain to it, and name the MX host
//! (RFC 7672 §3.2.2).

use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509CheckFlags, X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509Ref, X509StoreContext, X509};

use super::records::{Matching, Selector, UsableTlsa, Usage};

/// Which record made the certificate acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaneMatch {
    /// A DANE-EE record matched the server's certificate.
    EndEntity,
    /// A DANE-TA record matched a trust anchor the certificate chains to.
    TrustAnchor,
}

/// The part of `cert` a selector names, in DER.
fn selected(cert: &X509Ref, selector: Selector) -> Option<Vec<u8>> {
    match selector {
        Selector::Certificate => cert.to_der().ok(),
        Selector::PublicKey => cert.public_key().ok()?.public_key_to_der().ok(),
    }
}

/// Whether `record` names `cert`.
fn matches(record: &UsableTlsa, cert: &X509Ref) -> bool {
    let Some(part) = selected(cert, record.selector) else {
        return false;
    };
    let digest = |md: MessageDigest| openssl::hash::hash(md, &part).map(|d| d.to_vec());
    let compared = match record.matching {
        Matching::Exact => Ok(part),
        Matching::Sha256 => digest(MessageDigest::sha256()),
        Matching::Sha512 => digest(MessageDigest::sha512()),
    };
    compared.is_ok_and(|c| c == record.data)
}

/// Checks the chain a server sent (its own certificate first) against
/// its usable TLSA records; `host` is the MX host name DANE-TA's name
/// check wants. The error says why nothing matched.
pub fn check(records: &[UsableTlsa], chain: &[X509], host: &str) -> Result<DaneMatch, String> {
    let Some(leaf) = chain.first() else {
        return Err("the server sent no certificate".into());
    };
    let of = |usage: Usage| records.iter().filter(move |r| r.usage == usage);
    if of(Usage::EndEntity).any(|r| matches(r, leaf)) {
        return Ok(DaneMatch::EndEntity);
    }
    let mut why = None;
    for record in of(Usage::TrustAnchor) {
        for anchor in anchors(record, chain) {
            match chains_to(leaf, &chain[1..], &anchor, host) {
                Ok(()) => return Ok(DaneMatch::TrustAnchor),
                Err(e) => why = Some(e),
            }
        }
    }
    Err(match why {
        Some(e) => format!("the certificate chains to a DANE-TA trust anchor but {e}"),
        None => format!(
            "the certificate matches none of the {} usable TLSA records",
            records.len()
        ),
    })
}

/// The certificates `record` (a DANE-TA record) names: those of the
/// chain above the server's own that match it, and for `2 0 0` the
/// certificate the record holds, which the server need not send.
fn anchors(record: &UsableTlsa, chain: &[X509]) -> Vec<X509> {
    let mut found: Vec<X509> = chain
        .iter()
        .skip(1)
        .filter(|c| matches(record, c))
        .cloned()
        .collect();
    if (record.selector, record.matching) == (Selector::Certificate, Matching::Exact) {
        if let Ok(cert) = X509::from_der(&record.data) {
            found.push(cert);
        }
    }
    found
}

/// Verifies that `leaf` chains to `anchor` (trusted as it is, even when
/// not self-signed) through `intermediates`, and names `host`.
fn chains_to(leaf: &X509, intermediates: &[X509], anchor: &X509, host: &str) -> Result<(), String> {
    let failed = |e: openssl::error::ErrorStack| format!("cannot check the chain: {e}");
    let mut store = X509StoreBuilder::new().map_err(failed)?;
    store.add_cert(anchor.clone()).map_err(failed)?;
    let mut param = X509VerifyParam::new().map_err(failed)?;
    param.set_host(host).map_err(failed)?;
    param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
    // A trust anchor need not be a root (RFC 7671 §5.2.2).
    param
        .set_flags(X509VerifyFlags::PARTIAL_CHAIN)
        .map_err(failed)?;
    store.set_param(&param).map_err(failed)?;
    let store = store.build();
    let mut untrusted = Stack::new().map_err(failed)?;
    for c in intermediates {
        untrusted.push(c.clone()).map_err(failed)?;
    }
    let mut ctx = X509StoreContext::new().map_err(failed)?;
    let (ok, error) = ctx
        .init(&store, leaf, &untrusted, |c| {
            Ok((c.verify_cert()?, c.error()))
        })
        .map_err(failed)?;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "does not verify for {host}: {}",
            error.error_string()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData,
    };

    /// A certificate and its SubjectPublicKeyInfo, in DER, the key's
    /// as rcgen writes it.
    struct Made {
        der: Vec<u8>,
        spki: Vec<u8>,
    }

    impl Made {
        fn x509(&self) -> X509 {
            X509::from_der(&self.der).unwrap()
        }
    }

    fn self_signed(names: &[&str], expired: bool) -> Made {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Made {
            der,
            spki: key.subject_public_key_info(),
        }
    }

    /// A CA and a certificate for `names` it signed.
    fn ca_and_leaf(names: &[&str]) -> (Made, Made) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dane test CA");
        let ca_der = ca_params.self_signed(&ca_key).unwrap().der().to_vec();
        let ca_spki = ca_key.subject_public_key_info();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let der = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap()
            .der()
            .to_vec();
        let ca = Made {
            der: ca_der,
            spki: ca_spki,
        };
        (
            ca,
            Made {
                der,
                spki: key.subject_public_key_info(),
            },
        )
    }

    fn record(usage: Usage, selector: Selector, matching: Matching, of: &[u8]) -> UsableTlsa {
        let data = match matching {
            Matching::Exact => of.to_vec(),
            Matching::Sha256 => openssl::sha::sha256(of).to_vec(),
            Matching::Sha512 => openssl::sha::sha512(of).to_vec(),
        };
        UsableTlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    const ALL_MATCHING: [Matching; 3] = [Matching::Exact, Matching::Sha256, Matching::Sha512];

    #[test]
    fn dane_ee_matches_the_certificate_or_its_key_by_every_matching_type() {
        let leaf = self_signed(&["mx.d.test"], false);
        let spki = leaf.spki.clone();
        for m in ALL_MATCHING {
            for (selector, of) in [
                (Selector::PublicKey, &spki[..]),
                (Selector::Certificate, &leaf.der[..]),
            ] {
                let r = record(Usage::EndEntity, selector, m, of);
                assert_eq!(
                    check(&[r], &[leaf.x509()], "mx.d.test"),
                    Ok(DaneMatch::EndEntity),
                    "{selector:?} {m:?}"
                );
            }
        }
    }

    #[test]
    fn dane_ee_ignores_names_and_expiry_but_not_the_key() {
        let leaf = self_signed(&["somewhere.else.test"], true);
        let r = record(
            Usage::EndEntity,
            Selector::PublicKey,
            Matching::Sha256,
            &leaf.spki.clone(),
        );
        assert_eq!(
            check(std::slice::from_ref(&r), &[leaf.x509()], "mx.d.test"),
            Ok(DaneMatch::EndEntity)
        );
        // Another server's key does not match, nor does a DANE-TA record
        // of the same digest for a lone certificate.
        let other = self_signed(&["mx.d.test"], false);
        let e = check(std::slice::from_ref(&r), &[other.x509()], "mx.d.test").unwrap_err();
        assert!(
            e.contains("matches none of the 1 usable TLSA records"),
            "{e}"
        );
        let ta = UsableTlsa {
            usage: Usage::TrustAnchor,
            ..r
        };
        assert!(check(&[ta], &[leaf.x509()], "mx.d.test").is_err());
        assert!(check(&[], &[], "mx.d.test").is_err());
    }

    #[test]
    fn dane_ta_matches_an_issuer_the_certificate_chains_to_for_the_mx_name() {
        let (ca, leaf) = ca_and_leaf(&["mx.d.test"]);
        let chain = [leaf.x509(), ca.x509()];
        let spki = ca.spki.clone();
        for m in ALL_MATCHING {
            for (selector, of) in [
                (Selector::PublicKey, &spki[..]),
                (Selector::Certificate, &ca.der[..]),
            ] {
                let r = record(Usage::TrustAnchor, selector, m, of);
                assert_eq!(
                    check(std::slice::from_ref(&r), &chain, "mx.d.test"),
                    Ok(DaneMatch::TrustAnchor),
                    "{selector:?} {m:?}"
                );
                // The name is checked: another MX host's certificate
                // from the same CA does not do.
                let e = check(&[r], &chain, "other.d.test").unwrap_err();
                assert!(e.contains("does not verify for other.d.test"), "{e}");
            }
        }
        // A full trust anchor in the record (2 0 0) need not be sent.
        let r = record(
            Usage::TrustAnchor,
            Selector::Certificate,
            Matching::Exact,
            &ca.der,
        );
        assert_eq!(
            check(&[r], &[leaf.x509()], "mx.d.test"),
            Ok(DaneMatch::TrustAnchor)
        );
        // A DANE-TA digest of the server's own certificate is no anchor,
        // and a CA the chain does not lead to matches nothing.
        let r = record(
            Usage::TrustAnchor,
            Selector::Certificate,
            Matching::Sha256,
            &leaf.der,
        );
        assert!(check(&[r], &chain, "mx.d.test").is_err());
        let (other_ca, _) = ca_and_leaf(&["mx.d.test"]);
        let r = record(
            Usage::TrustAnchor,
            Selector::PublicKey,
            Matching::Sha256,
            &other_ca.spki.clone(),
        );
        assert!(check(&[r], &chain, "mx.d.test").is_err());
    }

    #[test]
    fn pkix_usages_never_reach_the_matching() {
        // 0 and 1 name the same certificate as a working 3 1 1, but the
        // record reader drops them: left with nothing, there is no DANE.
        let leaf = self_signed(&["mx.d.test"], false);
        let digest = openssl::sha::sha256(&leaf.spki.clone()).to_vec();
        for usage in [0, 1] {
            let wire = crate::delivery::dns::Tlsa {
                usage,
                selector: 1,
                matching: 1,
                data: digest.clone(),
            };
            assert!(UsableTlsa::from_record(&wire).is_none());
        }
        let wire = crate::delivery::dns::Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: digest,
        };
        let usable = UsableTlsa::from_record(&wire).unwrap();
        assert_eq!(
            check(&[usable], &[leaf.x509()], "mx.d.test"),
            Ok(DaneMatch::EndEntity)
        );
    }
}
