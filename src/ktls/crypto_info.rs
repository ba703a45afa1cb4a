//! The kernel's `tls12_crypto_info_*` structures, built from rustls' secrets.
//!
//! Sans-IO: this only lays out bytes for `setsockopt(SOL_TLS, TLS_TX|TLS_RX)`.
//! The layouts are those of `include/uapi/linux/tls.h`; `version` and
//! `cipher_type` are host-endian, the record sequence number is big-endian.

use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// `TLS_1_2_VERSION`.
const TLS_1_2_VERSION: u16 = 0x0303;
/// `TLS_1_3_VERSION`.
const TLS_1_3_VERSION: u16 = 0x0304;
/// `TLS_CIPHER_AES_GCM_128`.
pub const CIPHER_AES_GCM_128: u16 = 51;
/// `TLS_CIPHER_AES_GCM_256`.
pub const CIPHER_AES_GCM_256: u16 = 52;
/// `TLS_CIPHER_CHACHA20_POLY1305`.
pub const CIPHER_CHACHA20_POLY1305: u16 = 54;

/// Largest structure: ChaCha20-Poly1305 and AES-256-GCM are both 56 bytes.
const MAX_LEN: usize = 56;

/// Which way a secret is used; it matters for TLS 1.2 AES-GCM only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Records we send.
    Tx,
    /// Records we receive.
    Rx,
}

/// A filled crypto_info structure. The bytes are wiped on drop.
pub struct CryptoInfo {
    bytes: [u8; MAX_LEN],
    len: usize,
}

impl CryptoInfo {
    /// The structure to pass to `setsockopt`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        // Volatile writes so the wipe is not optimised away as a dead store.
        for b in self.bytes.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// The secret's version or cipher cannot be offloaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoInfoError {
    /// Only TLS 1.2 and 1.3 exist in the kernel.
    #[error("protocol version {0:?} has no kernel TLS support")]
    Version(ProtocolVersion),
    /// A cipher rustls negotiated but the kernel mapping does not know.
    #[error("cipher has no kernel TLS mapping")]
    Cipher,
    /// Key or IV of an unexpected length.
    #[error("unexpected key or IV length")]
    Length,
}

/// An all-zero key of the given version and cipher, for probing what the
/// kernel accepts. Never used for traffic.
pub fn probe_info(version: ProtocolVersion, cipher: u16) -> Result<CryptoInfo, CryptoInfoError> {
    let version_code = match version {
        ProtocolVersion::TLSv1_2 => TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => TLS_1_3_VERSION,
        other => return Err(CryptoInfoError::Version(other)),
    };
    let len = match cipher {
        CIPHER_AES_GCM_128 => 40,
        CIPHER_AES_GCM_256 | CIPHER_CHACHA20_POLY1305 => 56,
        _ => return Err(CryptoInfoError::Cipher),
    };
    let mut info = CryptoInfo {
        bytes: [0; MAX_LEN],
        len,
    };
    info.bytes[0..2].copy_from_slice(&version_code.to_ne_bytes());
    info.bytes[2..4].copy_from_slice(&cipher.to_ne_bytes());
    Ok(info)
}

/// The kernel cipher type of a secret (`TLS_CIPHER_*`).
pub fn cipher_type(secrets: &ConnectionTrafficSecrets) -> Result<u16, CryptoInfoError> {
    match secrets {
        // The key length, not the variant, decides: rustls before 0.23.2
        // reported AES-256 as Aes128Gcm.
        ConnectionTrafficSecrets::Aes128Gcm { key, .. }
        | ConnectionTrafficSecrets::Aes256Gcm { key, .. } => match key.as_ref().len() {
            16 => Ok(CIPHER_AES_GCM_128),
            32 => Ok(CIPHER_AES_GCM_256),
            _ => Err(CryptoInfoError::Length),
        },
        ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Ok(CIPHER_CHACHA20_POLY1305),
        _ => Err(CryptoInfoError::Cipher),
    }
}

/// Lays out the crypto_info for one direction.
///
/// `seq` is the sequence number of the next record in that direction, as
/// rustls reports it.
pub fn build(
    version: ProtocolVersion,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
    direction: Direction,
) -> Result<CryptoInfo, CryptoInfoError> {
    let version_code = match version {
        ProtocolVersion::TLSv1_2 => TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => TLS_1_3_VERSION,
        other => return Err(CryptoInfoError::Version(other)),
    };
    let cipher = cipher_type(secrets)?;
    let mut info = CryptoInfo {
        bytes: [0; MAX_LEN],
        len: 0,
    };
    let b = &mut info.bytes;
    b[0..2].copy_from_slice(&version_code.to_ne_bytes());
    b[2..4].copy_from_slice(&cipher.to_ne_bytes());
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (key, iv) = (key.as_ref(), iv.as_ref());
            if iv.len() != 12 {
                return Err(CryptoInfoError::Length);
            }
            // Layout: info(4) iv(8) key(16|32) salt(4) rec_seq(8).
            let explicit = gcm_explicit_iv(version, iv, seq, direction);
            let klen = key.len();
            b[4..12].copy_from_slice(&explicit);
            b[12..12 + klen].copy_from_slice(key);
            b[12 + klen..16 + klen].copy_from_slice(&iv[..4]);
            b[16 + klen..24 + klen].copy_from_slice(&seq.to_be_bytes());
            info.len = 24 + klen;
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            let (key, iv) = (key.as_ref(), iv.as_ref());
            if key.len() != 32 || iv.len() != 12 {
                return Err(CryptoInfoError::Length);
            }
            // Layout: info(4) iv(12) key(32) salt(0) rec_seq(8).
            b[4..16].copy_from_slice(iv);
            b[16..48].copy_from_slice(key);
            b[48..56].copy_from_slice(&seq.to_be_bytes());
            info.len = 56;
        }
        _ => return Err(CryptoInfoError::Cipher),
    }
    Ok(info)
}

/// The 8-byte `iv` field for AES-GCM.
///
/// TLS 1.3 (and RX in general): the kernel XORs the sequence number into
/// salt‖iv itself, as rustls does, so it gets rustls' IV tail unchanged.
/// TLS 1.2 TX: the kernel sends `iv` as the explicit nonce of the first
/// record and then increments it, while userspace (rustls, then
/// `tls::traffic`, which forms nonces the same way) used `iv[4..12] XOR seq`
/// for the records it sent. Starting the kernel at `iv[4..12] + seq` keeps
/// every kernel nonce above every nonce userspace used (x XOR j <= x + j),
/// so no nonce repeats under the same key.
fn gcm_explicit_iv(version: ProtocolVersion, iv: &[u8], seq: u64, direction: Direction) -> [u8; 8] {
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&iv[4..12]);
    if version == ProtocolVersion::TLSv1_2 && direction == Direction::Tx {
        u64::from_be_bytes(tail).wrapping_add(seq).to_be_bytes()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn iv() -> Iv {
        Iv::new([1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0xff])
    }

    /// A 32-byte key (AES-128 keys cannot be built outside rustls; the
    /// VM tests cover them through real handshakes).
    fn key() -> AeadKey {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = 0x10 + i as u8;
        }
        AeadKey::from(k)
    }

    #[test]
    fn chacha_layout() {
        let s = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: key(),
            iv: iv(),
        };
        let info = build(ProtocolVersion::TLSv1_3, 2, &s, Direction::Tx).unwrap();
        let b = info.as_bytes();
        assert_eq!(b.len(), 56);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 0x0304);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 54);
        assert_eq!(&b[4..16], iv().as_ref());
        assert_eq!(b[16], 0x10);
        assert_eq!(&b[48..56], &2u64.to_be_bytes());
    }

    #[test]
    fn aes256_layout_and_tls13_iv_unchanged() {
        let s = ConnectionTrafficSecrets::Aes256Gcm {
            key: key(),
            iv: iv(),
        };
        let info = build(ProtocolVersion::TLSv1_3, 7, &s, Direction::Tx).unwrap();
        let b = info.as_bytes();
        assert_eq!(b.len(), 56);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 52);
        assert_eq!(&b[4..12], &iv().as_ref()[4..12]);
        assert_eq!(&b[12..44], key().as_ref());
        assert_eq!(&b[44..48], &[1, 2, 3, 4]);
        assert_eq!(&b[48..56], &7u64.to_be_bytes());
    }

    #[test]
    fn tls12_gcm_tx_nonce_starts_past_every_rustls_nonce() {
        let s = ConnectionTrafficSecrets::Aes256Gcm {
            key: key(),
            iv: iv(),
        };
        let tx = build(ProtocolVersion::TLSv1_2, 1, &s, Direction::Tx).unwrap();
        let rx = build(ProtocolVersion::TLSv1_2, 1, &s, Direction::Rx).unwrap();
        let base = u64::from_be_bytes(iv().as_ref()[4..12].try_into().unwrap());
        let kernel_first = u64::from_be_bytes(tx.as_bytes()[4..12].try_into().unwrap());
        assert_eq!(kernel_first, base + 1);
        // rustls used base ^ 0 for the Finished (seq 0): must differ.
        assert_ne!(kernel_first, base);
        // base is odd here, where XOR-with-seq would collide: (base ^ 1) + 1 == base.
        assert_eq!((base ^ 1) + 1, base);
        assert_eq!(&rx.as_bytes()[4..12], &iv().as_ref()[4..12]);
        for seq in 0..64u64 {
            for j in 0..seq {
                for k in 0..64u64 {
                    assert_ne!(base ^ j, base.wrapping_add(seq).wrapping_add(k));
                }
            }
        }
    }

    #[test]
    fn unsupported_version_is_refused() {
        let s = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: key(),
            iv: iv(),
        };
        assert!(matches!(
            build(ProtocolVersion::TLSv1_1, 0, &s, Direction::Tx),
            Err(CryptoInfoError::Version(_))
        ));
    }
}
