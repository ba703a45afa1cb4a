//! The record layer of an established session in userspace.
//!
//! Once the handshake is done rustls gives up its traffic secrets
//! (`dangerous_into_kernel_connection`), exactly as for the kernel handover,
//! and [`Traffic`] seals and opens the records itself with aws-lc-rs: a
//! record is sealed in place in the caller's output buffer (one copy of the
//! plaintext, no allocation) and opened in place in the input buffer. rustls
//! keeps only what it alone can do: derive the next secrets on a TLS 1.3
//! KeyUpdate, and take a backend's session tickets.
//!
//! The same state then moves to the kernel unchanged when a connection
//! pauses for kTLS: [`Traffic::into_secrets`] gives the current secrets with
//! their sequence numbers.

use ::aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion,
    SupportedCipherSuite,
};

use super::unbuffered::Unbuffered;

/// Largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// AEAD tag of every suite we negotiate.
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce, carried in each record.
const EXPLICIT_NONCE: usize = 8;
/// Most a record may add to its plaintext, per RFC 8446 5.2 (TLS 1.3) and
/// RFC 5246 6.2.3 (TLS 1.2).
const MAX_EXPANSION_13: usize = 256;
const MAX_EXPANSION_12: usize = 2048;
/// Largest room one record takes in an output buffer beyond its plaintext.
pub const RECORD_OVERHEAD: usize = HEADER + EXPLICIT_NONCE + 1 + TAG;
/// A TLS 1.3 KeyUpdate message that does not ask for one back.
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0];
/// A sealed KeyUpdate record.
const KEY_UPDATE_RECORD: usize = HEADER + KEY_UPDATE_NOT_REQUESTED.len() + 1 + TAG;

const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
/// TLS 1.3 NewSessionTicket handshake type.
pub const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
/// TLS 1.3 KeyUpdate handshake type.
pub const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const CLOSE_NOTIFY: [u8; 2] = [ALERT_WARNING, 0];

/// Why a session's records could not be sealed or opened. Each names the
/// alert the peer gets, if any ([`TrafficError::alert`]).
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// A record failed authentication: forged, corrupted or out of order.
    #[error("record failed authentication")]
    BadRecordMac,
    /// A record larger than TLS allows.
    #[error("record of {0} bytes is larger than TLS allows")]
    Overflow(usize),
    /// A record or message that does not parse.
    #[error("malformed record: {0}")]
    Decode(&'static str),
    /// A well-formed record that has no place after the handshake.
    #[error("unexpected {0} after the handshake")]
    Unexpected(&'static str),
    /// A KeyUpdate with a request value other than 0 or 1.
    #[error("KeyUpdate with an invalid request value")]
    IllegalParameter,
    /// The peer ended the session with this alert.
    #[error("peer sent alert {0:?}")]
    PeerAlert(AlertDescription),
    /// A TLS 1.2 session reached its cipher's confidentiality limit; TLS
    /// 1.3 re-keys instead.
    #[error("TLS 1.2 session reached its cipher's record limit")]
    Exhausted,
    /// A secret of a cipher this layer does not implement.
    #[error("traffic secret of an unsupported cipher")]
    Cipher,
    /// rustls refused: new secrets, a session ticket, or the conversion.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

impl TrafficError {
    /// The fatal alert the peer gets for this failure, if one is owed.
    pub fn alert(&self) -> Option<AlertDescription> {
        match self {
            TrafficError::BadRecordMac => Some(AlertDescription::BadRecordMac),
            TrafficError::Overflow(_) => Some(AlertDescription::RecordOverflow),
            TrafficError::Decode(_) => Some(AlertDescription::DecodeError),
            TrafficError::Unexpected(_) => Some(AlertDescription::UnexpectedMessage),
            TrafficError::IllegalParameter => Some(AlertDescription::IllegalParameter),
            TrafficError::Rustls(_) | TrafficError::Exhausted | TrafficError::Cipher => {
                Some(AlertDescription::InternalError)
            }
            TrafficError::PeerAlert(_) => None,
        }
    }
}

/// One direction's keys.
struct Keys {
    aead: LessSafeKey,
    iv: [u8; 12],
    /// Sequence number of the next record.
    seq: u64,
    /// Kept for the kernel handover.
    secrets: ConnectionTrafficSecrets,
}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, TrafficError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(TrafficError::Cipher),
        };
        let aead = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| TrafficError::Cipher)?;
        let iv = iv.as_ref().try_into().map_err(|_| TrafficError::Cipher)?;
        Ok(Self {
            aead: LessSafeKey::new(aead),
            iv,
            seq,
            secrets,
        })
    }

    /// The per-record nonce: the IV XORed with the sequence number (TLS 1.3,
    /// TLS 1.2 ChaCha20, and the explicit part rustls sends in TLS 1.2 GCM).
    fn nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn is_gcm(&self) -> bool {
        !matches!(
            self.secrets,
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. }
        )
    }
}

/// What a side does with post-handshake messages only it may receive: a
/// client takes session tickets, a server refuses them.
pub trait PostHandshake {
    /// Handles a NewSessionTicket's payload.
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), TrafficError>;
}

impl PostHandshake for KernelConnection<ServerConnectionData> {
    fn new_session_ticket(&mut self, _: &[u8]) -> Result<(), TrafficError> {
        Err(TrafficError::Unexpected("NewSessionTicket from a client"))
    }
}

impl PostHandshake for KernelConnection<ClientConnectionData> {
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), TrafficError> {
        Ok(self.handle_new_session_ticket(payload)?)
    }
}

/// An established session's record layer; see the module docs.
pub struct Traffic<Data> {
    kernel: KernelConnection<Data>,
    tls13: bool,
    /// Records one key may seal (the suite's confidentiality limit).
    limit: u64,
    tx: Keys,
    rx: Keys,
    /// The peer's close_notify arrived: nothing after it is read.
    peer_closed: bool,
}

/// Whether the peer closed its direction, after [`Traffic::open`].
pub type PeerClosed = bool;

impl<Data> Traffic<Data>
where
    KernelConnection<Data>: PostHandshake,
{
    /// Takes over a rustls connection whose handshake is complete and that
    /// has nothing left to send.
    pub fn from_rustls<C: Unbuffered<Data = Data>>(conn: C) -> Result<Self, TrafficError> {
        let (secrets, kernel) = conn.into_kernel()?;
        Self::new(secrets, kernel)
    }

    /// The record layer for these secrets and rustls' remaining state.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<Data>,
    ) -> Result<Self, TrafficError> {
        let tls13 = match kernel.protocol_version() {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return Err(TrafficError::Cipher),
        };
        let limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        Ok(Self {
            kernel,
            tls13,
            // Re-key (or stop) a little early: each KeyUpdate is a record too.
            limit: limit.saturating_sub(1),
            tx: Keys::new(secrets.tx)?,
            rx: Keys::new(secrets.rx)?,
            peer_closed: false,
        })
    }

    /// The negotiated version.
    pub fn version(&self) -> ProtocolVersion {
        self.kernel.protocol_version()
    }

    /// The negotiated suite.
    pub fn suite(&self) -> SupportedCipherSuite {
        self.kernel.negotiated_cipher_suite()
    }

    /// The peer's close_notify has been read.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Gives up the current secrets with the next sequence numbers (for the
    /// kernel), and rustls' state for later KeyUpdates and tickets.
    pub fn into_secrets(self) -> (ExtractedSecrets, KernelConnection<Data>) {
        let secrets = ExtractedSecrets {
            tx: (self.tx.seq, self.tx.secrets),
            rx: (self.rx.seq, self.rx.secrets),
        };
        (secrets, self.kernel)
    }

    /// The most room [`Traffic::seal_into`] needs for `plain_len` bytes;
    /// never less than an alert record takes.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        let plain_len = plain_len.max(CLOSE_NOTIFY.len());
        let records = plain_len.div_ceil(MAX_PLAINTEXT);
        let rekey = if self.tx.seq.saturating_add(records as u64) >= self.limit {
            KEY_UPDATE_RECORD
        } else {
            0
        };
        plain_len + records * self.record_overhead() + rekey
    }

    /// Seals `plain` as application data records into the front of `out`,
    /// which must hold [`Traffic::sealed_len`] bytes; returns how many it
    /// wrote. The plaintext is encrypted straight into `out`: no copy.
    pub fn seal_into(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, TrafficError> {
        let mut at = 0;
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            at += self.seal_record(CONTENT_APPLICATION_DATA, chunk, &mut out[at..])?;
        }
        Ok(at)
    }

    /// Appends `plain` to `out` as application data records.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TrafficError> {
        let room = self.sealed_len(plain.len());
        self.append(out, room, |this, buf| this.seal_into(plain, buf))
    }

    /// Appends a close_notify alert to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), TrafficError> {
        self.push_record(CONTENT_ALERT, &CLOSE_NOTIFY, out)
    }

    /// Seals a close_notify alert into the front of `out`, which must hold
    /// `sealed_len(2)` bytes; returns how many it wrote.
    pub fn close_notify_into(&mut self, out: &mut [u8]) -> Result<usize, TrafficError> {
        self.seal_record(CONTENT_ALERT, &CLOSE_NOTIFY, out)
    }

    /// Appends a fatal alert to `out`; failing to seal it only means the
    /// peer does not learn why.
    pub fn fatal_alert(&mut self, description: AlertDescription, out: &mut Vec<u8>) {
        let _ = self.push_record(CONTENT_ALERT, &[ALERT_FATAL, description.into()], out);
    }

    /// Opens every complete record at the front of `incoming`, appending
    /// application data to `plain`, and removes them (a partial record
    /// stays). Records owed to the peer meanwhile (a KeyUpdate answer, or
    /// the alert for a failure) are appended to `control`, to be sent
    /// before more data. Returns whether the peer sent close_notify.
    pub fn open(
        &mut self,
        incoming: &mut Vec<u8>,
        plain: &mut Vec<u8>,
        control: &mut Vec<u8>,
    ) -> Result<PeerClosed, TrafficError> {
        let mut done = 0;
        let result = loop {
            if self.peer_closed {
                // Nothing after close_notify counts.
                done = incoming.len();
                break Ok(true);
            }
            let rest = &mut incoming[done..];
            let Some(len) = record_len(rest, self.tls13) else {
                break Ok(false);
            };
            let len = match len {
                Ok(len) if rest.len() >= HEADER + len => len,
                Ok(_) => break Ok(false),
                Err(e) => break Err(e),
            };
            let (header, body) = rest[..HEADER + len].split_at_mut(HEADER);
            done += HEADER + len;
            let step = self
                .open_record(header, body)
                .and_then(|(kind, content)| self.received(kind, content, plain, control));
            if let Err(e) = step {
                break Err(e);
            }
        };
        incoming.drain(..done);
        if let Err(e) = &result {
            if let Some(alert) = e.alert() {
                self.fatal_alert(alert, control);
            }
        }
        result
    }

    /// Opens one record in place: its inner type and content.
    fn open_record<'b>(
        &mut self,
        header: &[u8],
        body: &'b mut [u8],
    ) -> Result<(u8, &'b [u8]), TrafficError> {
        let rx = &mut self.rx;
        if self.tls13 {
            match header[0] {
                CONTENT_APPLICATION_DATA => {}
                CONTENT_CHANGE_CIPHER_SPEC => {
                    return Err(TrafficError::Unexpected("ChangeCipherSpec"))
                }
                _ => return Err(TrafficError::Unexpected("unencrypted record")),
            }
            if body.len() < TAG + 1 {
                return Err(TrafficError::Decode("record shorter than its tag"));
            }
            let nonce = Nonce::assume_unique_for_key(rx.nonce());
            let opened = rx
                .aead
                .open_in_place(nonce, Aad::from(header), body)
                .map_err(|_| TrafficError::BadRecordMac)?;
            rx.seq += 1;
            // The inner type is the last non-zero byte; zeros after it are padding.
            let end = opened
                .iter()
                .rposition(|&b| b != 0)
                .ok_or(TrafficError::Unexpected("record without a content type"))?;
            if end > MAX_PLAINTEXT {
                return Err(TrafficError::Overflow(end));
            }
            Ok((opened[end], &opened[..end]))
        } else {
            let kind = header[0];
            let explicit = if rx.is_gcm() { EXPLICIT_NONCE } else { 0 };
            if body.len() < explicit + TAG {
                return Err(TrafficError::Decode("record shorter than its tag"));
            }
            let content_len = body.len() - explicit - TAG;
            if content_len > MAX_PLAINTEXT {
                return Err(TrafficError::Overflow(content_len));
            }
            let nonce = if explicit > 0 {
                let mut nonce = [0; 12];
                nonce[..4].copy_from_slice(&rx.iv[..4]);
                nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
                nonce
            } else {
                rx.nonce()
            };
            let aad = tls12_aad(rx.seq, kind, content_len);
            let opened = rx
                .aead
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut body[explicit..],
                )
                .map_err(|_| TrafficError::BadRecordMac)?;
            rx.seq += 1;
            Ok((kind, &*opened))
        }
    }

    /// Acts on one opened record.
    fn received(
        &mut self,
        kind: u8,
        content: &[u8],
        plain: &mut Vec<u8>,
        control: &mut Vec<u8>,
    ) -> Result<(), TrafficError> {
        match kind {
            CONTENT_APPLICATION_DATA => plain.extend_from_slice(content),
            CONTENT_ALERT => {
                let &[level, description] = content else {
                    return Err(TrafficError::Decode("alert of the wrong length"));
                };
                let description = AlertDescription::from(description);
                match description {
                    AlertDescription::CloseNotify => self.peer_closed = true,
                    // TLS 1.3 has one non-fatal alert; TLS 1.2 says by level.
                    AlertDescription::UserCanceled if self.tls13 => {}
                    _ if !self.tls13 && level == ALERT_WARNING => {}
                    _ => return Err(TrafficError::PeerAlert(description)),
                }
            }
            CONTENT_HANDSHAKE if self.tls13 => {
                let messages = handshake_messages(content)?;
                let last = messages.len();
                for (i, (kind, payload)) in messages.into_iter().enumerate() {
                    match kind {
                        HANDSHAKE_KEY_UPDATE => {
                            // The new key starts with the next record.
                            if i + 1 != last {
                                return Err(TrafficError::Unexpected(
                                    "message after KeyUpdate in its record",
                                ));
                            }
                            self.key_update_received(payload, control)?;
                        }
                        HANDSHAKE_NEW_SESSION_TICKET => self.kernel.new_session_ticket(payload)?,
                        _ => return Err(TrafficError::Unexpected("handshake message")),
                    }
                }
            }
            CONTENT_HANDSHAKE => return Err(TrafficError::Unexpected("renegotiation")),
            CONTENT_CHANGE_CIPHER_SPEC => return Err(TrafficError::Unexpected("ChangeCipherSpec")),
            _ => return Err(TrafficError::Unexpected("record type")),
        }
        Ok(())
    }

    /// The peer's KeyUpdate: its next records use the next secret, and if it
    /// asks, ours do too after we say so (RFC 8446 4.6.3).
    fn key_update_received(
        &mut self,
        payload: &[u8],
        control: &mut Vec<u8>,
    ) -> Result<(), TrafficError> {
        let requested = match payload {
            [0] => false,
            [1] => true,
            [_] => return Err(TrafficError::IllegalParameter),
            _ => return Err(TrafficError::Decode("KeyUpdate of the wrong length")),
        };
        self.rx = Keys::new(self.kernel.update_rx_secret()?)?;
        if requested {
            self.key_update(control)?;
        }
        Ok(())
    }

    /// Sends KeyUpdate (not requesting one back) and moves to the next
    /// sending secret.
    fn key_update(&mut self, out: &mut Vec<u8>) -> Result<(), TrafficError> {
        self.append(out, KEY_UPDATE_RECORD, Self::key_update_into)
    }

    fn key_update_into(&mut self, out: &mut [u8]) -> Result<usize, TrafficError> {
        let n = self.seal_one(CONTENT_HANDSHAKE, &KEY_UPDATE_NOT_REQUESTED, out);
        self.tx = Keys::new(self.kernel.update_tx_secret()?)?;
        Ok(n)
    }

    /// Appends one record to `out`.
    fn push_record(
        &mut self,
        kind: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TrafficError> {
        let room = self.sealed_len(payload.len());
        self.append(out, room, |this, buf| this.seal_record(kind, payload, buf))
    }

    /// Appends to `out` what `seal` writes into `room` bytes at its end;
    /// on failure `out` is left as it was.
    fn append(
        &mut self,
        out: &mut Vec<u8>,
        room: usize,
        seal: impl FnOnce(&mut Self, &mut [u8]) -> Result<usize, TrafficError>,
    ) -> Result<(), TrafficError> {
        let start = out.len();
        out.resize(start + room, 0);
        let sealed = seal(self, &mut out[start..]);
        out.truncate(start + *sealed.as_ref().unwrap_or(&0));
        sealed.map(|_| ())
    }

    /// Seals one record into the front of `out`, re-keying first when the
    /// key is used up; returns the bytes written.
    fn seal_record(
        &mut self,
        kind: u8,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TrafficError> {
        let mut at = 0;
        if self.tx.seq >= self.limit {
            if !self.tls13 {
                return Err(TrafficError::Exhausted);
            }
            at = self.key_update_into(out)?;
        }
        Ok(at + self.seal_one(kind, payload, &mut out[at..]))
    }

    /// Bytes a record adds to its plaintext.
    fn record_overhead(&self) -> usize {
        if self.tls13 {
            HEADER + 1 + TAG
        } else if self.tx.is_gcm() {
            HEADER + EXPLICIT_NONCE + TAG
        } else {
            HEADER + TAG
        }
    }

    fn seal_one(&mut self, kind: u8, payload: &[u8], out: &mut [u8]) -> usize {
        let overhead = self.record_overhead();
        let tx = &mut self.tx;
        let raw_nonce = tx.nonce();
        let nonce = Nonce::assume_unique_for_key(raw_nonce);
        let len = payload.len() + overhead;
        let (header, body) = out[..len].split_at_mut(HEADER);
        // Sealing fails only for lengths beyond the AEAD's limits (GiB) or
        // mismatched buffers, which these exact slices rule out.
        const SEALS: &str = "a record's slices fit the AEAD";
        if self.tls13 {
            header.copy_from_slice(&record_header(CONTENT_APPLICATION_DATA, len - HEADER));
            let (ciphertext, type_and_tag) = body.split_at_mut(payload.len());
            tx.aead
                .seal_out_of_place_scatter(
                    nonce,
                    Aad::from(&*header),
                    payload,
                    ciphertext,
                    &[kind],
                    type_and_tag,
                )
                .expect(SEALS);
        } else {
            let explicit = if tx.is_gcm() { EXPLICIT_NONCE } else { 0 };
            header.copy_from_slice(&record_header(kind, len - HEADER));
            // rustls sends the XORed nonce's last 8 bytes: unique per record.
            let (explicit_nonce, body) = body.split_at_mut(explicit);
            explicit_nonce.copy_from_slice(&raw_nonce[12 - explicit..]);
            let (ciphertext, tag) = body.split_at_mut(payload.len());
            let aad = tls12_aad(tx.seq, kind, payload.len());
            tx.aead
                .seal_out_of_place_scatter(nonce, Aad::from(aad), payload, ciphertext, &[], tag)
                .expect(SEALS);
        }
        tx.seq += 1;
        len
    }
}

fn record_header(kind: u8, len: usize) -> [u8; HEADER] {
    let [hi, lo] = (len as u16).to_be_bytes();
    [kind, 3, 3, hi, lo]
}

/// TLS 1.2's additional data: sequence number, type, version, length.
fn tls12_aad(seq: u64, kind: u8, len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = kind;
    aad[9..11].copy_from_slice(&[3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// The body length of the record starting `buf`: `None` until its header is
/// in, an error when the header cannot be a record's.
fn record_len(buf: &[u8], tls13: bool) -> Option<Result<usize, TrafficError>> {
    let header: &[u8; HEADER] = buf.get(..HEADER)?.try_into().ok()?;
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let max = MAX_PLAINTEXT
        + if tls13 {
            MAX_EXPANSION_13
        } else {
            MAX_EXPANSION_12
        };
    Some(if header[1] != 3 {
        Err(TrafficError::Decode("record version"))
    } else if len > max {
        Err(TrafficError::Overflow(len))
    } else {
        Ok(len)
    })
}

/// Splits a handshake record's content into its messages: (type, payload).
/// A message split across records is refused: after the handshake only
/// KeyUpdate (5 bytes) and NewSessionTicket (well under a record) come.
pub fn handshake_messages(mut content: &[u8]) -> Result<Vec<(u8, &[u8])>, TrafficError> {
    let mut messages = Vec::new();
    while !content.is_empty() {
        let [kind, a, b, c, rest @ ..] = content else {
            return Err(TrafficError::Decode("truncated handshake message header"));
        };
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if rest.len() < len {
            return Err(TrafficError::Decode(
                "handshake message split across records",
            ));
        }
        let (payload, after) = rest.split_at(len);
        messages.push((*kind, payload));
        content = after;
    }
    Ok(messages)
}

#[cfg(test)]
mod tests;
