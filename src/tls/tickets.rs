//! Session ticket keys shared by a fleet.
//!
//! Instances behind one L4 load balancer resume each other's sessions only
//! if they seal tickets with the same keys. The operator distributes a key
//! file in the layout HAProxy's `tls-ticket-keys` and nginx's
//! `ssl_session_ticket_key` use: one key per line, base64 of 80 random bytes
//! (`openssl rand 80 | base64 -w0`). tlsplice reads it newest first: the
//! first key seals new tickets, every key in the file opens them, so a
//! rotation is "prepend a key, drop the oldest, reload".
//!
//! A ticket is `key name (16) || nonce (12) || AES-256-GCM(state) || tag`,
//! with the key name as associated data. Of each 80-byte key, bytes 0..16
//! name it and 16..48 are the AES key; the last 32 bytes (an HMAC key in
//! CBC-HMAC ticket schemes) are not needed by an AEAD and are ignored.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use rustls::crypto::GetRandomFailed;
use rustls::server::ProducesTickets;
use rustls::TicketRotator;

use crate::config::TicketSettings;

/// Bytes in one key as written (base64-decoded).
pub const KEY_LEN: usize = 80;
/// Bytes of the key name that prefixes each ticket.
const NAME_LEN: usize = 16;
/// Bytes of the AES-256 key.
const AES_KEY_LEN: usize = 32;

/// Why a ticket key file was refused; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TicketKeyError {
    /// Line of the key file the problem is on.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// One ticket key: its name and its AES-256 key.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    name: [u8; NAME_LEN],
    aes: [u8; AES_KEY_LEN],
}

impl fmt::Debug for TicketKey {
    // Key material never reaches a log; the name is not secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &hex(&self.name))
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    /// Splits an 80-byte key as written into its parts.
    fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let mut name = [0; NAME_LEN];
        let mut aes = [0; AES_KEY_LEN];
        name.copy_from_slice(&bytes[..NAME_LEN]);
        aes.copy_from_slice(&bytes[NAME_LEN..NAME_LEN + AES_KEY_LEN]);
        Self { name, aes }
    }

    /// The AEAD key; `None` only if aws-lc refuses a 32-byte AES key.
    fn sealing_key(&self) -> Option<RandomizedNonceKey> {
        RandomizedNonceKey::new(&AES_256_GCM, &self.aes).ok()
    }

    /// The key's name as lowercase hex, for logs.
    pub fn name_hex(&self) -> String {
        hex(&self.name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a key file: one base64 key per line, newest first; blank lines
/// and lines starting with `#` are skipped. At least one key is required
/// and key names must be distinct (a ticket names the key that opens it).
pub fn parse_key_file(text: &str) -> Result<Vec<TicketKey>, TicketKeyError> {
    let mut keys: Vec<TicketKey> = Vec::new();
    let mut last_line = 1;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        last_line = number;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |message: String| TicketKeyError {
            line: number,
            message,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| fail(format!("not base64: {e}")))?;
        let bytes: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            fail(format!(
                "a key is {KEY_LEN} bytes (openssl rand {KEY_LEN} | base64 -w0), this one is {}",
                bytes.len()
            ))
        })?;
        let key = TicketKey::from_bytes(&bytes);
        if let Some(earlier) = keys.iter().position(|k| k.name == key.name) {
            return Err(fail(format!(
                "key name {} repeats key {} of the file",
                key.name_hex(),
                earlier + 1
            )));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(TicketKeyError {
            line: last_line,
            message: "no key in the file".into(),
        });
    }
    Ok(keys)
}

/// Seals tickets with the first key of a key file and opens them with any.
pub struct KeyFileTicketer {
    keys: Vec<([u8; NAME_LEN], RandomizedNonceKey)>,
    lifetime: u32,
}

impl fmt::Debug for KeyFileTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFileTicketer")
            .field("keys", &self.keys.len())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl KeyFileTicketer {
    /// A ticketer over `keys` (newest first, at least one) whose tickets
    /// clients are told to keep for `lifetime_secs`.
    pub fn from_keys(keys: &[TicketKey], lifetime_secs: u32) -> Arc<dyn ProducesTickets> {
        let keys = keys
            .iter()
            .filter_map(|k| Some((k.name, k.sealing_key()?)))
            .collect();
        Arc::new(Self {
            keys,
            lifetime: lifetime_secs,
        })
    }
}

impl ProducesTickets for KeyFileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (name, key) = self.keys.first()?;
        let mut sealed = plain.to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(name), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(name);
        ticket.extend_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (_, key) = self.keys.iter().find(|(n, _)| n == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain_len = key
            .open_in_place(nonce, Aad::from(name), &mut opened)
            .ok()?
            .len();
        opened.truncate(plain_len);
        Some(opened)
    }
}

/// Hands out the ticketer for a configuration. Without a key file, keys
/// live in memory and rotate every half ticket lifetime (the previous key
/// still opens tickets for one more half); they are kept across reloads, so a
/// reload does not cost every client a full handshake.
#[derive(Debug, Default)]
pub struct Ticketers {
    memory: Option<(u32, Arc<dyn ProducesTickets>)>,
}

impl Ticketers {
    /// The ticketer for `settings`: the key file's keys when one is
    /// configured, else this process's in-memory keys.
    pub fn for_settings(
        &mut self,
        settings: &TicketSettings,
    ) -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
        let lifetime = u32::try_from(settings.lifetime.as_secs()).unwrap_or(u32::MAX);
        if let Some(file) = &settings.keys {
            return Ok(KeyFileTicketer::from_keys(&file.keys, lifetime));
        }
        match &self.memory {
            Some((kept, ticketer)) if *kept == lifetime => Ok(ticketer.clone()),
            _ => {
                // A rotated key still opens tickets for one more period and
                // the rotator announces twice its period: rotating every
                // half lifetime honours the configured lifetime exactly.
                let period = (lifetime / 2).max(1);
                let ticketer: Arc<dyn ProducesTickets> =
                    Arc::new(TicketRotator::new(period, random_ticketer)?);
                self.memory = Some((lifetime, ticketer.clone()));
                Ok(ticketer)
            }
        }
    }
}

/// Tickets bound to one client-trust policy.
///
/// rustls resumes a session without verifying the client again, and checks
/// only the suite and SNI. Tickets sealed under one listener's (or route's)
/// policy must therefore not resume under another's (an optional-auth
/// listener's session without a certificate, resumed where a certificate is
/// required), nor after a reload changed the policy (a new CRL, a client
/// removed from the allowlist). The policy's digest is sealed in each
/// ticket and checked when it is opened. Instances with the same keys and
/// the same policy compute the same digest, so tickets still cross a fleet.
#[derive(Debug)]
pub struct ScopedTicketer {
    inner: Arc<dyn ProducesTickets>,
    scope: [u8; SCOPE_LEN],
}

/// Bytes of the policy digest at the start of each ticket's plaintext.
const SCOPE_LEN: usize = 32;

impl ScopedTicketer {
    /// Tickets from `inner`, valid only under the policy digested in `scope`.
    pub fn new(inner: Arc<dyn ProducesTickets>, scope: [u8; SCOPE_LEN]) -> Self {
        Self { inner, scope }
    }
}

impl ProducesTickets for ScopedTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut scoped = Vec::with_capacity(SCOPE_LEN + plain.len());
        scoped.extend_from_slice(&self.scope);
        scoped.extend_from_slice(plain);
        self.inner.encrypt(&scoped)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let mut opened = self.inner.decrypt(ticket)?;
        if opened.get(..SCOPE_LEN)? != self.scope {
            return None;
        }
        opened.drain(..SCOPE_LEN);
        Some(opened)
    }
}

/// A ticketer with one fresh random key, for [`TicketRotator`] (which
/// reports the lifetime itself).
fn random_ticketer() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
    let mut bytes = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| GetRandomFailed)?;
    let key = TicketKey::from_bytes(&bytes);
    let sealing = key.sealing_key().ok_or(GetRandomFailed)?;
    Ok(Box::new(KeyFileTicketer {
        keys: vec![(key.name, sealing)],
        lifetime: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(seed: u8) -> String {
        let bytes: Vec<u8> = (0..KEY_LEN as u8).map(|i| i.wrapping_mul(seed)).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn keys(seeds: &[u8]) -> Vec<TicketKey> {
        let text: Vec<String> = seeds.iter().map(|s| key_line(*s)).collect();
        parse_key_file(&text.join("\n")).unwrap()
    }

    #[test]
    fn parses_keys_skipping_comments_and_blank_lines() {
        let text = format!("# rotated daily\n\n{}\n  {}  \n", key_line(3), key_line(5));
        let parsed = parse_key_file(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], keys(&[3])[0]);
    }

    #[test]
    fn refuses_bad_lines_with_their_number() {
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 48]);
        let err = parse_key_file(&format!("{}\n{short}\n", key_line(3))).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("80 bytes"), "{err}");

        let err = parse_key_file("# none\nnot base64!\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("base64"), "{err}");

        let err = parse_key_file(&format!("{}\n{}\n", key_line(3), key_line(3))).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("repeats key 1"), "{err}");

        let err = parse_key_file("# only a comment\n").unwrap_err();
        assert!(err.message.contains("no key"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_aes_key() {
        let k = &keys(&[7])[0];
        let shown = format!("{k:?}");
        assert!(shown.contains(&k.name_hex()));
        assert!(!shown.contains(&hex(&k.aes)));
    }

    #[test]
    fn tickets_open_under_any_key_of_the_file_and_seal_under_the_first() {
        let old = KeyFileTicketer::from_keys(&keys(&[3]), 3600);
        let rotated = KeyFileTicketer::from_keys(&keys(&[5, 3]), 3600);
        let only_new = KeyFileTicketer::from_keys(&keys(&[5]), 3600);

        let from_old = old.encrypt(b"session state").unwrap();
        assert_eq!(rotated.decrypt(&from_old).unwrap(), b"session state");
        assert!(only_new.decrypt(&from_old).is_none());

        let from_rotated = rotated.encrypt(b"next").unwrap();
        assert_eq!(only_new.decrypt(&from_rotated).unwrap(), b"next");
        assert!(old.decrypt(&from_rotated).is_none());
    }

    #[test]
    fn scoped_tickets_open_only_under_the_same_scope() {
        let keys: Arc<dyn ProducesTickets> = KeyFileTicketer::from_keys(&keys(&[3]), 60);
        let api = ScopedTicketer::new(keys.clone(), [1; SCOPE_LEN]);
        let api_again = ScopedTicketer::new(keys.clone(), [1; SCOPE_LEN]);
        let portal = ScopedTicketer::new(keys.clone(), [2; SCOPE_LEN]);

        let ticket = api.encrypt(b"state").unwrap();
        assert_eq!(api_again.decrypt(&ticket).unwrap(), b"state");
        assert!(portal.decrypt(&ticket).is_none());
        // Nor does an unscoped ticket from the same keys open.
        assert!(api.decrypt(&keys.encrypt(b"state").unwrap()).is_none());
    }

    #[test]
    fn announced_lifetime_is_the_configured_one_with_or_without_a_key_file() {
        let lifetime = std::time::Duration::from_secs(3600);
        let mut ticketers = Ticketers::default();
        let memory = TicketSettings {
            keys: None,
            lifetime,
        };
        let in_memory = ticketers.for_settings(&memory).unwrap();
        assert_eq!(in_memory.lifetime(), 3600);
        // Kept across reloads with the same lifetime.
        let again = ticketers.for_settings(&memory).unwrap();
        let ticket = in_memory.encrypt(b"state").unwrap();
        assert_eq!(again.decrypt(&ticket).unwrap(), b"state");

        let file = TicketSettings {
            keys: Some(crate::config::TicketKeyFile {
                path: "fleet.keys".into(),
                keys: keys(&[3]),
            }),
            lifetime,
        };
        assert_eq!(ticketers.for_settings(&file).unwrap().lifetime(), 3600);
    }

    #[test]
    fn tampered_or_truncated_tickets_are_refused() {
        let t = KeyFileTicketer::from_keys(&keys(&[3]), 60);
        let ticket = t.encrypt(b"state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert!(t.decrypt(&bad).is_none(), "flip at {i} accepted");
        }
        for len in 0..ticket.len() {
            assert!(t.decrypt(&ticket[..len]).is_none(), "length {len} accepted");
        }
        assert_eq!(t.lifetime(), 60);
    }
}
