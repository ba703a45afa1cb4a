//! OCSP messages (RFC 6960): the request tlsplice sends, and every check a
//! response must pass before its answer is believed. Sans-IO: bytes in,
//! verdict out.
//!
//! The request names the certificate by a SHA-1 `CertID`, the form every
//! responder understands (`openssl ocsp` looks certificates up by it), and
//! carries a random nonce. A response is believed only when:
//! - its status is `successful` and it is a `BasicOCSPResponse`;
//! - it is signed by the issuing CA itself, or by a delegated responder
//!   whose certificate the issuing CA signed with the OCSP-signing extended
//!   key usage, valid now;
//! - it holds a `SingleResponse` for exactly our `CertID`;
//! - its `thisUpdate` is not in the future and its `nextUpdate` (when
//!   present) not in the past, allowing [`CLOCK_SKEW`];
//! - it echoes our nonce, when it carries one (many responders, and all
//!   that pre-sign their answers, send none; RFC 8954).

use std::time::Duration;

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use x509_parser::certificate::X509Certificate;

use crate::tls::verify::der::{
    encode, expect, explicit, implicit, optional, raw_element, sequence, time_value, tlv,
    BIT_STRING, BOOLEAN, ENUMERATED, GENERALIZED_TIME, INTEGER, NULL, OCTET_STRING, OID, SEQUENCE,
};

/// How far the responder's clock may be from ours.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// 1.3.14.3.2.26, SHA-1.
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// 1.3.6.1.5.5.7.48.1.1, id-pkix-ocsp-basic.
const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// 1.3.6.1.5.5.7.48.1.2, id-pkix-ocsp-nonce.
const OID_OCSP_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
/// 1.3.6.1.5.5.7.3.9, id-kp-OCSPSigning.
pub(crate) const OID_OCSP_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09];

/// Identifies one certificate to the responder: hashes of its issuer's
/// name and key, and its serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    name_hash: [u8; 20],
    key_hash: [u8; 20],
    serial: Vec<u8>,
}

fn sha1(data: &[u8]) -> [u8; 20] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let mut out = [0u8; 20];
    out.copy_from_slice(digest.as_ref());
    out
}

impl CertId {
    /// The `CertID` of `cert`, issued by `issuer`.
    pub fn new(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Self {
        CertId {
            // The issuer's name as the certificate encodes it, which is what
            // responders hash (the issuer's own subject, byte for byte, in
            // any chain that verified).
            name_hash: sha1(cert.issuer().as_raw()),
            // The key's bits without the BIT STRING's unused-bits byte.
            key_hash: sha1(&issuer.public_key().subject_public_key.data),
            serial: cert.raw_serial().to_vec(),
        }
    }

    /// The DER `CertID`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        sequence(&[
            &sequence(&[&encode(OID, OID_SHA1), &encode(NULL, &[])]),
            &encode(OCTET_STRING, &self.name_hash),
            &encode(OCTET_STRING, &self.key_hash),
            &encode(INTEGER, &self.serial),
        ])
    }

    /// Whether the contents of a response's `CertID` SEQUENCE name this
    /// certificate.
    fn matches(&self, contents: &[u8]) -> Result<bool, &'static str> {
        let (alg, rest) = expect(contents, SEQUENCE, "CertID hashAlgorithm is not a SEQUENCE")?;
        let (oid, _) = expect(alg, OID, "CertID hashAlgorithm has no OID")?;
        let (name_hash, rest) = expect(rest, OCTET_STRING, "CertID issuerNameHash")?;
        let (key_hash, rest) = expect(rest, OCTET_STRING, "CertID issuerKeyHash")?;
        let (serial, _) = expect(rest, INTEGER, "CertID serialNumber")?;
        Ok(oid == OID_SHA1
            && name_hash == self.name_hash
            && key_hash == self.key_hash
            && serial == self.serial.as_slice())
    }
}

/// The DER `OCSPRequest` for one certificate, with a nonce extension when
/// `nonce` is given.
pub fn encode_request(id: &CertId, nonce: Option<&[u8]>) -> Vec<u8> {
    let request_list = sequence(&[&sequence(&[&id.encode()])]);
    let tbs = match nonce {
        Some(nonce) => {
            let extension = sequence(&[
                &encode(OID, OID_OCSP_NONCE),
                &encode(OCTET_STRING, &encode(OCTET_STRING, nonce)),
            ]);
            let extensions = encode(explicit(2), &sequence(&[&extension]));
            sequence(&[&request_list, &extensions])
        }
        None => sequence(&[&request_list]),
    };
    sequence(&[&tbs])
}

/// The certificate's status, as the responder states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Not revoked.
    Good,
    /// Revoked.
    Revoked,
    /// The responder does not know the certificate.
    Unknown,
}

/// A believed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// What the responder says.
    pub status: CertStatus,
    /// When the responder last knew the status to be correct.
    pub this_update: UnixTime,
    /// When newer information will be available; no later may the answer be
    /// used. `None`: newer information is always available.
    pub next_update: Option<UnixTime>,
}

/// Why a response was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not a well-formed OCSP response.
    #[error("malformed OCSP response: {0}")]
    Malformed(&'static str),
    /// The responder answered with an error status.
    #[error("responder answered {0}")]
    Status(&'static str),
    /// The response type is not `id-pkix-ocsp-basic`.
    #[error("response is not a basic OCSP response")]
    NotBasic,
    /// No `SingleResponse` names the certificate asked about.
    #[error("response does not cover this certificate (no matching CertID)")]
    NoMatchingCertId,
    /// Neither the issuing CA nor a delegated responder it authorised signed
    /// the response.
    #[error(
        "response is not signed by the issuing CA or a responder it authorised for OCSP signing"
    )]
    UntrustedSigner,
    /// `thisUpdate` is in the future.
    #[error("response is not yet valid (thisUpdate is {seconds} s in the future)")]
    NotYetValid {
        /// How far ahead.
        seconds: u64,
    },
    /// `nextUpdate` has passed.
    #[error("response expired {seconds} s ago (nextUpdate passed)")]
    Expired {
        /// How long ago.
        seconds: u64,
    },
    /// The response carries a nonce other than ours: a replay, or an answer
    /// to another request.
    #[error("response nonce does not match the request's")]
    NonceMismatch,
}

impl From<&'static str> for ResponseError {
    fn from(reason: &'static str) -> Self {
        ResponseError::Malformed(reason)
    }
}

/// What a response must match.
pub struct Expected<'a> {
    /// The certificate asked about.
    pub cert_id: &'a CertId,
    /// Its issuer, which signs the response or authorises the signer.
    pub issuer: &'a CertificateDer<'a>,
    /// The nonce sent, if any.
    pub nonce: Option<&'a [u8]>,
    /// The time to check validity at.
    pub now: UnixTime,
    /// Signature algorithms accepted (the crypto provider's).
    pub algorithms: &'a [&'a dyn SignatureVerificationAlgorithm],
}

/// Checks a DER `OCSPResponse` against what was asked and returns the
/// answer it holds; see the module documentation for what is checked.
pub fn check_response(der: &[u8], expected: &Expected<'_>) -> Result<Answer, ResponseError> {
    let (response, _) = expect(der, SEQUENCE, "OCSPResponse is not a SEQUENCE")?;
    let (status, rest) = expect(response, ENUMERATED, "responseStatus is not ENUMERATED")?;
    match status {
        [0] => {}
        [1] => return Err(ResponseError::Status("malformedRequest")),
        [2] => return Err(ResponseError::Status("internalError")),
        [3] => return Err(ResponseError::Status("tryLater")),
        [5] => return Err(ResponseError::Status("sigRequired")),
        [6] => return Err(ResponseError::Status("unauthorized")),
        _ => return Err(ResponseError::Status("an unknown status")),
    }
    let (bytes, _) = expect(
        rest,
        explicit(0),
        "successful response without responseBytes",
    )?;
    let (bytes, _) = expect(bytes, SEQUENCE, "ResponseBytes is not a SEQUENCE")?;
    let (kind, rest) = expect(bytes, OID, "responseType is not an OID")?;
    if kind != OID_OCSP_BASIC {
        return Err(ResponseError::NotBasic);
    }
    let (basic, _) = expect(rest, OCTET_STRING, "response is not an OCTET STRING")?;
    let (basic, _) = expect(basic, SEQUENCE, "BasicOCSPResponse is not a SEQUENCE")?;
    let (tbs_raw, rest) = raw_element(basic)?;
    let (sig_alg, rest) = expect(rest, SEQUENCE, "signatureAlgorithm is not a SEQUENCE")?;
    let (signature, rest) = expect(rest, BIT_STRING, "signature is not a BIT STRING")?;
    let signature = match signature.split_first() {
        Some((0, bits)) => bits,
        _ => return Err(ResponseError::Malformed("signature has unused bits")),
    };
    let (certs, _) = optional(rest, explicit(0))?;
    let mut delegates = Vec::new();
    if let Some(certs) = certs {
        let (mut list, _) = expect(certs, SEQUENCE, "certs is not a SEQUENCE")?;
        while !list.is_empty() {
            let (cert, rest) = raw_element(list)?;
            delegates.push(CertificateDer::from(cert));
            list = rest;
        }
    }
    check_signer(tbs_raw, sig_alg, signature, &delegates, expected)?;

    let (tbs, _) = expect(tbs_raw, SEQUENCE, "ResponseData is not a SEQUENCE")?;
    let (_version, rest) = optional(tbs, explicit(0))?;
    // responderID: byName [1] or byKey [2]; the signature check above
    // decides who signed, so it is only skipped.
    let (tag, _, rest) = tlv(rest)?;
    if tag != explicit(1) && tag != explicit(2) {
        return Err(ResponseError::Malformed(
            "responderID is neither byName nor byKey",
        ));
    }
    let (_produced_at, rest) = expect(rest, GENERALIZED_TIME, "producedAt is not a time")?;
    let (mut responses, rest) = expect(rest, SEQUENCE, "responses is not a SEQUENCE")?;
    let (extensions, _) = optional(rest, explicit(1))?;

    let mut answer = None;
    while !responses.is_empty() {
        let (single, rest) = expect(responses, SEQUENCE, "SingleResponse is not a SEQUENCE")?;
        responses = rest;
        let (cert_id, rest) = expect(single, SEQUENCE, "CertID is not a SEQUENCE")?;
        if !expected.cert_id.matches(cert_id)? {
            continue;
        }
        let (tag, _, rest) = tlv(rest)?;
        let status = match tag {
            t if t == implicit(0) => CertStatus::Good,
            t if t == explicit(1) => CertStatus::Revoked,
            t if t == implicit(2) => CertStatus::Unknown,
            _ => return Err(ResponseError::Malformed("unknown certStatus")),
        };
        let (this_update, rest) = expect(rest, GENERALIZED_TIME, "thisUpdate is not a time")?;
        let this_update = time_value(GENERALIZED_TIME, this_update)?;
        let (next_update, _) = optional(rest, explicit(0))?;
        let next_update = match next_update {
            Some(inner) => {
                let (t, _) = expect(inner, GENERALIZED_TIME, "nextUpdate is not a time")?;
                Some(time_value(GENERALIZED_TIME, t)?)
            }
            None => None,
        };
        answer = Some(Answer {
            status,
            this_update,
            next_update,
        });
        break;
    }
    let answer = answer.ok_or(ResponseError::NoMatchingCertId)?;

    let now = expected.now.as_secs();
    let skew = CLOCK_SKEW.as_secs();
    if answer.this_update.as_secs() > now + skew {
        return Err(ResponseError::NotYetValid {
            seconds: answer.this_update.as_secs() - now,
        });
    }
    if let Some(next) = answer.next_update {
        if next.as_secs() + skew < now {
            return Err(ResponseError::Expired {
                seconds: now - next.as_secs(),
            });
        }
    }
    if let (Some(sent), Some(extensions)) = (expected.nonce, extensions) {
        if let Some(echoed) = nonce_of(extensions)? {
            // Responders echo the extension value as we sent it (an OCTET
            // STRING around the nonce); some send the bare nonce.
            if echoed != encode(OCTET_STRING, sent).as_slice() && echoed != sent {
                return Err(ResponseError::NonceMismatch);
            }
        }
    }
    Ok(answer)
}

/// The nonce extension's value in `[1] EXPLICIT Extensions`, if present.
fn nonce_of(extensions: &[u8]) -> Result<Option<&[u8]>, ResponseError> {
    let (mut list, _) = expect(extensions, SEQUENCE, "responseExtensions is not a SEQUENCE")?;
    while !list.is_empty() {
        let (extension, rest) = expect(list, SEQUENCE, "Extension is not a SEQUENCE")?;
        list = rest;
        let (oid, rest) = expect(extension, OID, "extnID is not an OID")?;
        let (_critical, rest) = optional(rest, BOOLEAN)?;
        let (value, _) = expect(rest, OCTET_STRING, "extnValue is not an OCTET STRING")?;
        if oid == OID_OCSP_NONCE {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// Accepts the signature when the issuer made it, or a delegated responder
/// among `delegates` that the issuer certified for OCSP signing.
fn check_signer(
    signed: &[u8],
    sig_alg: &[u8],
    signature: &[u8],
    delegates: &[CertificateDer<'_>],
    expected: &Expected<'_>,
) -> Result<(), ResponseError> {
    if verifies(
        expected.issuer,
        signed,
        sig_alg,
        signature,
        expected.algorithms,
    ) {
        return Ok(());
    }
    let Ok(anchor) = webpki::anchor_from_trusted_cert(expected.issuer) else {
        return Err(ResponseError::UntrustedSigner);
    };
    for delegate in delegates {
        let Ok(cert) = webpki::EndEntityCert::try_from(delegate) else {
            continue;
        };
        let authorised = cert
            .verify_for_usage(
                expected.algorithms,
                std::slice::from_ref(&anchor),
                &[],
                expected.now,
                webpki::KeyUsage::required(OID_OCSP_SIGNING),
                None,
                None,
            )
            .is_ok();
        if authorised && verifies(delegate, signed, sig_alg, signature, expected.algorithms) {
            return Ok(());
        }
    }
    Err(ResponseError::UntrustedSigner)
}

/// Whether `signer`'s key made `signature` over `signed` with the algorithm
/// `sig_alg` (the contents of an AlgorithmIdentifier) names.
fn verifies(
    signer: &CertificateDer<'_>,
    signed: &[u8],
    sig_alg: &[u8],
    signature: &[u8],
    algorithms: &[&dyn SignatureVerificationAlgorithm],
) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(signer) else {
        return false;
    };
    // Several algorithms share a signature OID (ECDSA over P-256 and P-384
    // with SHA-256); the one for the signer's key type is the one that
    // succeeds.
    algorithms
        .iter()
        .filter(|alg| alg.signature_alg_id().as_ref() == sig_alg)
        .any(|alg| cert.verify_signature(*alg, signed, signature).is_ok())
}
