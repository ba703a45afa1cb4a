//! What this kernel's TLS offload can do, found once at start-up.
//!
//! Each (version, cipher) pair is tried on its own loopback connection,
//! because a socket accepts each direction's crypto state only once. The
//! connection decides before `dangerous_into_kernel_connection`, after which
//! there is no way back to userspace.

use std::fmt;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use rustls::ProtocolVersion;

use super::crypto_info::{
    probe_info, CIPHER_AES_GCM_128, CIPHER_AES_GCM_256, CIPHER_CHACHA20_POLY1305,
};
use super::socket::{enable_ulp, set_crypto, Way};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::TLSv1_2, ProtocolVersion::TLSv1_3];
const CIPHERS: [u16; 3] = [
    CIPHER_AES_GCM_128,
    CIPHER_AES_GCM_256,
    CIPHER_CHACHA20_POLY1305,
];

/// The kernel TLS capabilities of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Why the `tls` ULP is unusable, if it is.
    pub unavailable: Option<String>,
    /// (version, cipher type) pairs accepted for both TX and RX.
    pub supported: Vec<(ProtocolVersion, u16)>,
    /// Whether TLS 1.3 keys can be replaced (KeyUpdate, Linux 6.14+).
    pub rekey: bool,
}

impl Capabilities {
    /// No offload at all, with the reason.
    pub fn none(reason: impl Into<String>) -> Self {
        Self {
            unavailable: Some(reason.into()),
            supported: Vec::new(),
            rekey: false,
        }
    }

    /// Whether a session of this version and cipher can be offloaded.
    pub fn supports(&self, version: ProtocolVersion, cipher: u16) -> bool {
        self.supported.contains(&(version, cipher))
    }

    /// Whether anything can be offloaded.
    pub fn any(&self) -> bool {
        !self.supported.is_empty()
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.unavailable {
            return write!(f, "unavailable ({why})");
        }
        let names: Vec<String> = self
            .supported
            .iter()
            .map(|(v, c)| {
                let cipher = match *c {
                    CIPHER_AES_GCM_128 => "AES-128-GCM",
                    CIPHER_AES_GCM_256 => "AES-256-GCM",
                    _ => "CHACHA20-POLY1305",
                };
                let version = if *v == ProtocolVersion::TLSv1_3 {
                    "1.3"
                } else {
                    "1.2"
                };
                format!("TLS{version}/{cipher}")
            })
            .collect();
        write!(
            f,
            "{}; TLS 1.3 rekey {}",
            names.join(" "),
            if self.rekey {
                "yes"
            } else {
                "no (KeyUpdate closes)"
            }
        )
    }
}

/// Probes the kernel over loopback.
pub fn probe() -> Capabilities {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => return Capabilities::none(format!("loopback probe: {e}")),
    };
    let pair = || -> std::io::Result<(TcpStream, TcpStream)> {
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        Ok((client, server))
    };

    let mut caps = Capabilities {
        unavailable: None,
        supported: Vec::new(),
        rekey: false,
    };
    for version in VERSIONS {
        for cipher in CIPHERS {
            let Ok((sock, _peer)) = pair() else { continue };
            let fd = sock.as_raw_fd();
            if let Err(e) = enable_ulp(fd) {
                let why = match e.raw_os_error() {
                    Some(libc::ENOENT) => "the tls module is not loaded (modprobe tls)".to_string(),
                    _ => format!("TCP_ULP tls: {e}"),
                };
                return Capabilities::none(why);
            }
            let Ok(info) = probe_info(version, cipher) else {
                continue;
            };
            if set_crypto(fd, Way::Tx, &info).is_ok() && set_crypto(fd, Way::Rx, &info).is_ok() {
                caps.supported.push((version, cipher));
                if version == ProtocolVersion::TLSv1_3 && cipher == CIPHER_AES_GCM_128 {
                    // A second TX state is a rekey: EBUSY before Linux 6.14.
                    caps.rekey = set_crypto(fd, Way::Tx, &info).is_ok();
                }
            }
        }
    }
    if caps.supported.is_empty() {
        caps.unavailable = Some("no cipher accepted by the kernel".into());
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_consistently() {
        let caps = probe();
        // Either the kernel offers kTLS or it says why not; never both.
        assert_eq!(caps.any(), caps.unavailable.is_none(), "{caps:?}");
        assert!(!caps.to_string().is_empty());
    }
}
