//! A throwaway PKI for unit tests: a CA, a server and a client certificate
//! (ECDSA P-256, signed by the CA), and an expired server certificate,
//! written under `<tempdir>/pki/` with the names the dev PKI uses.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

/// The generated files and their contents.
pub(crate) struct Pki {
    root: tempfile::TempDir,
    dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
    pub ca_cert_pem: String,
    pub ca_cert_der: CertificateDer<'static>,
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_cert_der: CertificateDer<'static>,
    pub server_key_pem: String,
    pub server_key_der: Vec<u8>,
    pub client_cert_der: CertificateDer<'static>,
    pub expired_cert_der: CertificateDer<'static>,
}

fn dn(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in pairs {
        dn.push(t.clone(), *v);
    }
    dn
}

impl Pki {
    /// Generates everything into a fresh temporary directory.
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("pki");
        fs::create_dir(&dir).expect("mkdir pki");

        let ca_key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = dn(&[(DnType::CommonName, "tlsplice test CA")]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).expect("ca cert");

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params.distinguished_name = dn(&[(DnType::CommonName, "localhost")]);
        let server = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name = dn(&[
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "client"),
        ]);
        let client = params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");

        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("expired params");
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        let expired = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("expired cert");

        let pki = Pki {
            ca_cert_pem: ca.pem(),
            ca_cert_der: ca.der().clone(),
            ca_key_pem: ca_key.serialize_pem(),
            server_cert_pem: server.pem(),
            server_cert_der: server.der().clone(),
            server_key_pem: server_key.serialize_pem(),
            server_key_der: server_key.serialize_der(),
            client_cert_der: client.der().clone(),
            expired_cert_der: expired.der().clone(),
            root,
            dir,
            ca,
            ca_key,
        };
        pki.write("ca.crt", pki.ca_cert_pem.as_bytes());
        pki.write("ca.key", pki.ca_key_pem.as_bytes());
        pki.write("server.crt", pki.server_cert_pem.as_bytes());
        pki.write("server.key", pki.server_key_pem.as_bytes());
        pki.write("client.crt", client.pem().as_bytes());
        pki.write("client.key", client_key.serialize_pem().as_bytes());
        pki.write("expired.crt", expired.pem().as_bytes());
        pki
    }

    /// The temporary directory holding `pki/`; config files go here.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The `pki/` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a file in `pki/`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a file into `pki/` and returns its path.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).expect("write test file");
        path
    }

    /// A self-signed RSA 2048 certificate and its PKCS#8 key, written as
    /// `rsa.crt` and `rsa.key`. rcgen generates RSA keys with aws-lc-rs.
    pub fn rsa_pair(&self) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.distinguished_name = dn(&[(DnType::CommonName, "rsa")]);
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("rsa cert");
        (
            self.write("rsa.crt", cert.pem().as_bytes()),
            self.write("rsa.key", key.serialize_pem().as_bytes()),
        )
    }
}

/// Runs `openssl ARGS INPUT -out pki/OUT` and returns the output path, or
/// `None` (with a note) when openssl is not installed, so key-format tests
/// that need it skip instead of failing.
pub(crate) fn openssl(pki: &Pki, args: &[&str], input: &Path, out: &str) -> Option<PathBuf> {
    let out = pki.path(out);
    let status = Command::new("openssl")
        .args(args)
        .arg(input)
        .arg("-out")
        .arg(&out)
        .output();
    match status {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            eprintln!("note: skipping part of this test, openssl not runnable: {e}");
            None
        }
    }
}
