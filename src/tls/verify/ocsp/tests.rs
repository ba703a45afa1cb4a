//! OCSP request encoding (checked byte for byte against `openssl ocsp`),
//! response checks on responses built and signed here, and the checker's
//! failure handling.

use std::process::Command;
use std::time::Duration;

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::message::{
    check_response, encode_request, Answer, CertId, CertStatus, Expected, ResponseError,
};
use super::*;
use crate::tls::verify::der::{
    encode, explicit, implicit, sequence, BIT_STRING, ENUMERATED, GENERALIZED_TIME, OCTET_STRING,
    OID,
};
use crate::tls::verify::fixtures::{leaf, Ca, Leaf, LeafSpec};

/// ecdsa-with-SHA256 (1.2.840.10045.4.3.2), the fixtures' key type.
const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
const OCSP_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];

fn algorithms() -> &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm] {
    rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all
}

fn now() -> UnixTime {
    UnixTime::now()
}

fn shifted(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        now().as_secs().saturating_add_signed(secs),
    ))
}

fn generalized(t: UnixTime) -> Vec<u8> {
    let at = time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64).unwrap();
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    encode(GENERALIZED_TIME, text.as_bytes())
}

fn cert_id(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> CertId {
    let (_, cert) = X509Certificate::from_der(cert).unwrap();
    let (_, issuer) = X509Certificate::from_der(issuer).unwrap();
    CertId::new(&cert, &issuer)
}

/// What a test response says, and who signs it.
struct Spec<'a> {
    id: CertId,
    status: CertStatus,
    this_update: UnixTime,
    next_update: Option<UnixTime>,
    nonce: Option<&'a [u8]>,
    signer_key: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
}

impl Spec<'_> {
    fn good(id: CertId, signer: &Ca) -> Self {
        Spec {
            id,
            status: CertStatus::Good,
            this_update: shifted(-60),
            next_update: Some(shifted(3_600)),
            nonce: None,
            signer_key: signer.key_pkcs8(),
            certs: Vec::new(),
        }
    }

    fn der(&self) -> Vec<u8> {
        let status = match self.status {
            CertStatus::Good => encode(implicit(0), &[]),
            CertStatus::Revoked => encode(explicit(1), &generalized(shifted(-600))),
            CertStatus::Unknown => encode(implicit(2), &[]),
        };
        let mut single = vec![self.id.encode(), status, generalized(self.this_update)];
        if let Some(next) = self.next_update {
            single.push(encode(explicit(0), &generalized(next)));
        }
        let single: Vec<&[u8]> = single.iter().map(Vec::as_slice).collect();
        let mut data = vec![
            encode(explicit(2), &encode(OCTET_STRING, &[0u8; 20])),
            generalized(now()),
            sequence(&[&sequence(&single)]),
        ];
        if let Some(nonce) = self.nonce {
            let ext = sequence(&[
                &encode(OID, OCSP_NONCE),
                &encode(OCTET_STRING, &encode(OCTET_STRING, nonce)),
            ]);
            data.push(encode(explicit(1), &sequence(&[&ext])));
        }
        let data: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let tbs = sequence(&data);
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.signer_key).unwrap();
        let sig = key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), &tbs)
            .unwrap();
        let mut bits = vec![0u8];
        bits.extend_from_slice(sig.as_ref());
        let mut basic = vec![
            tbs,
            sequence(&[&encode(OID, ECDSA_SHA256)]),
            encode(BIT_STRING, &bits),
        ];
        if !self.certs.is_empty() {
            let certs: Vec<&[u8]> = self.certs.iter().map(|c| c.as_ref()).collect();
            basic.push(encode(explicit(0), &sequence(&certs)));
        }
        let basic: Vec<&[u8]> = basic.iter().map(Vec::as_slice).collect();
        let bytes = sequence(&[
            &encode(OID, OCSP_BASIC),
            &encode(OCTET_STRING, &sequence(&basic)),
        ]);
        sequence(&[&encode(ENUMERATED, &[0]), &encode(explicit(0), &bytes)])
    }
}

/// A delegated responder certificate from `ca`, with the OCSP-signing
/// usage or (`false`) clientAuth only.
fn responder(ca: &Ca, ocsp_signing: bool) -> Leaf {
    let spec = LeafSpec {
        ocsp_signing,
        ..LeafSpec::cn("ocsp responder")
    };
    leaf(ca, &spec)
}

struct World {
    ca: Ca,
    client: Leaf,
    id: CertId,
}

fn world() -> World {
    let ca = Ca::root("ocsp CA");
    let client = leaf(&ca, &LeafSpec::cn("ocsp client"));
    let id = cert_id(&client.cert, &ca.cert);
    World { ca, client, id }
}

fn check(w: &World, der: &[u8], nonce: Option<&[u8]>) -> Result<Answer, ResponseError> {
    check_response(
        der,
        &Expected {
            cert_id: &w.id,
            issuer: &w.ca.cert,
            nonce,
            now: now(),
            algorithms: algorithms(),
        },
    )
}

#[test]
fn request_is_byte_identical_to_openssl() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let issuer = write("ca.pem", &w.ca.cert_pem);
    let cert = write("client.pem", &w.client.cert_pem);
    let out = dir.path().join("req.der");
    let status = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&issuer)
        .arg("-cert")
        .arg(&cert)
        .arg("-reqout")
        .arg(&out)
        .output();
    match status {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "openssl ocsp -reqout failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            println!("note: openssl is not available ({e}); comparison skipped");
            return;
        }
    }
    let theirs = std::fs::read(&out).unwrap();
    assert_eq!(encode_request(&w.id, None), theirs);

    // With a nonce: the same request plus the extension openssl would add.
    let with_nonce = encode_request(&w.id, Some(&[7; 16]));
    assert!(with_nonce.len() > theirs.len());
    let text = Command::new("openssl")
        .args(["ocsp", "-req_text", "-reqin", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&with_nonce)?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("OCSP Nonce"), "{text}");
    assert!(text.contains("0707070707070707"), "{text}");
}

#[test]
fn good_and_revoked_answers_signed_by_the_issuer() {
    let w = world();
    let answer = check(&w, &Spec::good(w.id.clone(), &w.ca).der(), None).unwrap();
    assert_eq!(answer.status, CertStatus::Good);
    assert!(answer.next_update.unwrap().as_secs() > now().as_secs());

    let mut spec = Spec::good(w.id.clone(), &w.ca);
    spec.status = CertStatus::Revoked;
    assert_eq!(
        check(&w, &spec.der(), None).unwrap().status,
        CertStatus::Revoked
    );
    spec.status = CertStatus::Unknown;
    spec.next_update = None;
    let answer = check(&w, &spec.der(), None).unwrap();
    assert_eq!(
        (answer.status, answer.next_update),
        (CertStatus::Unknown, None)
    );
}

#[test]
fn expired_and_future_responses_are_refused() {
    let w = world();
    let mut spec = Spec::good(w.id.clone(), &w.ca);
    spec.this_update = shifted(-7_200);
    spec.next_update = Some(shifted(-3_600));
    assert!(matches!(
        check(&w, &spec.der(), None),
        Err(ResponseError::Expired { .. })
    ));
    // Within the allowed clock skew it still counts.
    spec.next_update = Some(shifted(-60));
    assert!(check(&w, &spec.der(), None).is_ok());

    spec.this_update = shifted(3_600);
    spec.next_update = Some(shifted(7_200));
    assert!(matches!(
        check(&w, &spec.der(), None),
        Err(ResponseError::NotYetValid { .. })
    ));
}

#[test]
fn wrong_signers_are_refused() {
    let w = world();
    let other = Ca::root("other CA");
    let spec = Spec::good(w.id.clone(), &other);
    assert_eq!(
        check(&w, &spec.der(), None),
        Err(ResponseError::UntrustedSigner)
    );

    // A delegated responder the issuer certified for OCSP signing.
    let delegate = responder(&w.ca, true);
    let mut spec = Spec::good(w.id.clone(), &w.ca);
    spec.signer_key = delegate.key.secret_pkcs8_der().to_vec();
    spec.certs = vec![delegate.cert.clone()];
    assert_eq!(
        check(&w, &spec.der(), None).unwrap().status,
        CertStatus::Good
    );

    // Without its certificate in the response it proves nothing.
    spec.certs.clear();
    assert_eq!(
        check(&w, &spec.der(), None),
        Err(ResponseError::UntrustedSigner)
    );

    // Issued by the CA but without the OCSP-signing usage.
    let not_ocsp = responder(&w.ca, false);
    spec.signer_key = not_ocsp.key.secret_pkcs8_der().to_vec();
    spec.certs = vec![not_ocsp.cert.clone()];
    assert_eq!(
        check(&w, &spec.der(), None),
        Err(ResponseError::UntrustedSigner)
    );

    // OCSP-signing, but certified by another CA.
    let foreign = responder(&other, true);
    spec.signer_key = foreign.key.secret_pkcs8_der().to_vec();
    spec.certs = vec![foreign.cert.clone()];
    assert_eq!(
        check(&w, &spec.der(), None),
        Err(ResponseError::UntrustedSigner)
    );

    // A good signature over altered contents.
    let mut der = Spec::good(w.id.clone(), &w.ca).der();
    let at = der.windows(2).position(|p| p == [implicit(0), 0]).unwrap();
    der[at] = implicit(2);
    assert_eq!(check(&w, &der, None), Err(ResponseError::UntrustedSigner));
}

#[test]
fn answers_about_another_certificate_are_refused() {
    let w = world();
    let sibling = leaf(&w.ca, &LeafSpec::cn("sibling"));
    let spec = Spec::good(cert_id(&sibling.cert, &w.ca.cert), &w.ca);
    assert_eq!(
        check(&w, &spec.der(), None),
        Err(ResponseError::NoMatchingCertId)
    );
}

#[test]
fn nonces_must_match_when_echoed() {
    let w = world();
    let mut spec = Spec::good(w.id.clone(), &w.ca);
    spec.nonce = Some(&[1; 16]);
    let der = spec.der();
    assert!(check(&w, &der, Some(&[1; 16])).is_ok());
    assert_eq!(
        check(&w, &der, Some(&[2; 16])),
        Err(ResponseError::NonceMismatch)
    );
    // A responder that sends no nonce is believed.
    assert!(check(&w, &Spec::good(w.id.clone(), &w.ca).der(), Some(&[2; 16])).is_ok());
}

#[test]
fn error_statuses_and_junk_never_panic() {
    let w = world();
    let try_later = sequence(&[&encode(ENUMERATED, &[3])]);
    assert_eq!(
        check(&w, &try_later, None),
        Err(ResponseError::Status("tryLater"))
    );
    assert!(matches!(
        check(&w, b"<html>", None),
        Err(ResponseError::Malformed(_))
    ));
    let der = Spec::good(w.id.clone(), &w.ca).der();
    for len in 0..der.len() {
        assert!(
            check(&w, &der[..len], None).is_err(),
            "prefix of {len} bytes"
        );
    }
    for i in 0..der.len() {
        let mut flipped = der.clone();
        flipped[i] ^= 0x55;
        // Every byte is either structure or signed (or the signature).
        assert!(check(&w, &flipped, None).is_err(), "byte {i} flipped");
    }
}

#[test]
fn aia_url_is_read_from_the_certificate() {
    let ca = Ca::root("aia CA");
    let spec = LeafSpec {
        ocsp_url: Some("http://127.0.0.1:9/ocsp".into()),
        ..LeafSpec::cn("aia")
    };
    let with = leaf(&ca, &spec);
    let (_, cert) = X509Certificate::from_der(&with.cert).unwrap();
    assert_eq!(
        aia_ocsp_url(&cert).as_deref(),
        Some("http://127.0.0.1:9/ocsp")
    );
    let without = leaf(&ca, &LeafSpec::cn("plain"));
    let (_, cert) = X509Certificate::from_der(&without.cert).unwrap();
    assert_eq!(aia_ocsp_url(&cert), None);
}

#[test]
fn checker_fails_on_a_dead_responder_then_skips_it() {
    let w = world();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let settings = OcspSettings {
        responder: Some(ResponderUrl::parse(&format!("http://{port}")).unwrap()),
        timeout: Duration::from_secs(5),
        ..OcspSettings::default()
    };
    let checker = OcspChecker::new(settings, vec![w.ca.cert.clone()], algorithms());
    let first = checker.check(&w.client.cert, &[], now());
    assert!(
        matches!(first, Outcome::Failed(OcspFailure::Unreachable { .. })),
        "{first:?}"
    );
    let second = checker.check(&w.client.cert, &[], now());
    assert!(
        matches!(second, Outcome::Failed(OcspFailure::RecentlyDown { .. })),
        "{second:?}"
    );

    // No configured responder and no AIA URL: nothing to ask.
    let checker = OcspChecker::new(
        OcspSettings::default(),
        vec![w.ca.cert.clone()],
        algorithms(),
    );
    let outcome = checker.check(&w.client.cert, &[], now());
    assert!(
        matches!(outcome, Outcome::Failed(OcspFailure::NoResponder)),
        "{outcome:?}"
    );
    // An issuer outside the chain and the trust store.
    let checker = OcspChecker::new(OcspSettings::default(), Vec::new(), algorithms());
    let outcome = checker.check(&w.client.cert, &[], now());
    assert!(
        matches!(outcome, Outcome::Failed(OcspFailure::NoIssuer)),
        "{outcome:?}"
    );
}
