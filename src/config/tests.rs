//! Tests of the whole path: file or flags in, `Config` or messages out,
//! against a freshly generated PKI.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::tls::certs::test_pki::Pki;

/// The minimal valid listener; tests append or swap lines.
const LISTENER: &str = r#"[[listener]]
listen = "127.0.0.1:8443"
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
backends = ["127.0.0.1:8080"]
"#;

fn write(pki: &Pki, text: &str) -> PathBuf {
    let path = pki.root().join("tlsplice.toml");
    fs::write(&path, text).unwrap();
    path
}

/// The rendered errors of a config that must fail.
fn errors(pki: &Pki, text: &str) -> (PathBuf, Vec<String>) {
    let path = write(pki, text);
    match load_file(&path) {
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
        Err(e) => (path, e.0.iter().map(ToString::to_string).collect()),
    }
}

/// Expects exactly one error, equal to `file:line:column: rest`.
fn expect_one(pki: &Pki, text: &str, line: usize, column: usize, rest: &str) {
    let (path, errs) = errors(pki, text);
    let want = format!("{}:{line}:{column}: {rest}", path.display());
    assert_eq!(errs, vec![want], "config:\n{text}");
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn full_valid_config_with_defaults() {
    let pki = Pki::new();
    let path = write(
        &pki,
        r#"
workers = 3
idle_timeout = "1m30s"
connect_timeout = 2

[[listener]]
name = "main"
listen = ["127.0.0.1:8443", "[::1]:8443"]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
alpn = ["h2", "http/1.1"]
backends = ["127.0.0.1:8080", "localhost:8081"]

[[listener]]
listen = "127.0.0.1:9443"
backlog = 16
cert = "pki/server.crt"
key = "pki/server.key"
client_auth = "off"
tls_versions = ["1.3"]
cipher_suites = ["CHACHA20_POLY1305", "AES_256_GCM"]
backends = "127.0.0.1:9090"
"#,
    );
    let c = load_file(&path).unwrap();
    assert_eq!(c.workers, 3);
    assert_eq!(c.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.max_connections_per_worker, 10_000);
    assert_eq!(c.max_handshakes_per_worker, 1024);
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let main = &c.listeners[0];
    assert_eq!(main.name, "main");
    assert_eq!(
        main.listen,
        vec![addr("127.0.0.1:8443"), addr("[::1]:8443")]
    );
    assert_eq!(main.backlog, 1024);
    let tls = &main.tls;
    assert_eq!(tls.client_auth, ClientAuth::Required);
    assert_eq!(tls.cert_chain, vec![pki.server_cert_der.clone()]);
    assert_eq!(tls.client_ca, vec![pki.ca_cert_der.clone()]);
    assert_eq!(tls.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(tls.versions, vec![TlsVersion::Tls12, TlsVersion::Tls13]);
    assert_eq!(
        tls.cipher_suites,
        vec![
            CipherSuite::Aes128Gcm,
            CipherSuite::Aes256Gcm,
            CipherSuite::Chacha20Poly1305
        ]
    );
    assert_eq!(main.backends[0].addr, addr("127.0.0.1:8080"));
    assert_eq!(main.backends[1].name, "localhost:8081");
    assert_eq!(main.backends[1].addr.port(), 8081);
    assert!(main.backends[1].addr.ip().is_loopback());

    let second = &c.listeners[1];
    assert_eq!(second.name, "listener1");
    assert_eq!(second.backlog, 16);
    assert_eq!(second.tls.client_auth, ClientAuth::Off);
    assert!(second.tls.client_ca.is_empty());
    assert_eq!(second.tls.client_ca_path, None);
    assert!(second.tls.alpn.is_empty());
    assert_eq!(second.tls.versions, vec![TlsVersion::Tls13]);
    assert_eq!(
        second.tls.cipher_suites,
        vec![CipherSuite::Chacha20Poly1305, CipherSuite::Aes256Gcm]
    );
    assert_eq!(second.backends[0].addr, addr("127.0.0.1:9090"));
}

#[test]
fn default_workers_is_available_parallelism() {
    let pki = Pki::new();
    let c = load_file(&write(&pki, LISTENER)).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.workers, cores);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let pki = Pki::new();
    // The test's working directory has no pki/, so success proves the
    // paths were resolved against the file's directory.
    let c = load_file(&write(&pki, LISTENER)).unwrap();
    let tls = &c.listeners[0].tls;
    assert_eq!(tls.cert_path, pki.root().join("pki/server.crt"));
    assert_eq!(tls.key_path, pki.root().join("pki/server.key"));
    assert_eq!(tls.client_ca_path, Some(pki.root().join("pki/ca.crt")));

    // From a nested directory, with `..` and an absolute path.
    let etc = pki.root().join("etc");
    fs::create_dir(&etc).unwrap();
    let nested = etc.join("nested.toml");
    let text = LISTENER
        .replace("\"pki/server.crt\"", "\"../pki/server.crt\"")
        .replace("\"pki/server.key\"", "\"../pki/server.key\"")
        .replace(
            "\"pki/ca.crt\"",
            &format!("{:?}", pki.path("ca.crt").display().to_string()),
        );
    fs::write(&nested, text).unwrap();
    let c = load_file(&nested).unwrap();
    assert_eq!(c.listeners[0].tls.cert_path, etc.join("../pki/server.crt"));
    assert_eq!(c.listeners[0].tls.client_ca_path, Some(pki.path("ca.crt")));
}

#[test]
fn unknown_key() {
    let pki = Pki::new();
    let (path, errs) = errors(&pki, &format!("{LISTENER}bogus = 1\n"));
    assert_eq!(errs.len(), 1);
    let want = format!(
        "{}:7:1: listener[0].bogus: unknown field `bogus`, expected one of",
        path.display()
    );
    assert!(errs[0].starts_with(&want), "{errs:?}");

    let (path, errs) = errors(&pki, &format!("colour = \"red\"\n{LISTENER}"));
    let want = format!("{}:1:1: colour: unknown field `colour`", path.display());
    assert!(errs[0].starts_with(&want), "{errs:?}");
}

#[test]
fn type_and_syntax_errors_have_position_and_field() {
    let pki = Pki::new();
    expect_one(
        &pki,
        &format!("workers = \"two\"\n{LISTENER}"),
        1,
        11,
        "workers: invalid type: string \"two\", expected i64",
    );
    let (path, errs) = errors(&pki, &format!("{LISTENER}alpn = [\"h2\",\n"));
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(&format!("{}:8:1: listener[0].alpn: ", path.display())),
        "{errs:?}"
    );
    expect_one(
        &pki,
        "[[listener]\n",
        1,
        11,
        "listener[0]: invalid table header; expected `.`, `]]`",
    );
    expect_one(
        &pki,
        &LISTENER.replace("[[listener]]", "[listener]"),
        1,
        1,
        "listener: invalid type: map, expected a sequence; write each listener as a [[listener]] table (double brackets)",
    );
    expect_one(
        &pki,
        &format!("{LISTENER}listen = \"127.0.0.1:1\"\n"),
        7,
        1,
        "listener[0].listen: duplicate key `listen` in table `listener`",
    );
}

#[test]
fn bad_duration() {
    let pki = Pki::new();
    expect_one(
        &pki,
        &format!("handshake_timeout = \"10x\"\n{LISTENER}"),
        1,
        21,
        "handshake_timeout: unknown unit \"x\"; use h, m, s or ms",
    );
    expect_one(
        &pki,
        &format!("idle_timeout = \"0s\"\n{LISTENER}"),
        1,
        16,
        "idle_timeout: must be greater than zero",
    );
    expect_one(
        &pki,
        &format!("drain_timeout = -1\n{LISTENER}"),
        1,
        17,
        "drain_timeout: must not be negative, not -1",
    );
    // Zero drain is allowed: close at once.
    let c = load_file(&write(&pki, &format!("drain_timeout = 0\n{LISTENER}"))).unwrap();
    assert_eq!(c.drain_timeout, Duration::ZERO);
}

#[test]
fn bad_address() {
    let pki = Pki::new();
    let text = LISTENER.replace(
        "listen = \"127.0.0.1:8443\"",
        "listen = [\"127.0.0.1:8443\", \"localhost:8443\"]",
    );
    expect_one(
        &pki,
        &text,
        2,
        29,
        "listener[0].listen[1]: \"localhost:8443\" is not an IP address with a port (e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")",
    );
}

#[test]
fn address_used_twice() {
    let pki = Pki::new();
    let text = format!("{LISTENER}{}", LISTENER.replace("8080", "8081"));
    expect_one(
        &pki,
        &text,
        8,
        10,
        "listener[1].listen: address 127.0.0.1:8443 is already used by listener[0].listen",
    );
}

#[test]
fn missing_cert_file() {
    let pki = Pki::new();
    expect_one(
        &pki,
        &LISTENER.replace("pki/server.crt", "pki/missing.crt"),
        3,
        8,
        &format!(
            "listener[0].cert: cannot read {}: No such file or directory",
            pki.path("missing.crt").display()
        ),
    );
}

#[test]
fn missing_required_keys_point_at_the_listener() {
    let pki = Pki::new();
    let text = format!(
        "workers = 1\n\n{}",
        LISTENER.replace("cert = \"pki/server.crt\"\n", "")
    );
    expect_one(
        &pki,
        &text,
        3,
        1,
        "listener[0].cert: missing; the server certificate chain file is required",
    );
}

#[test]
fn mismatched_key() {
    let pki = Pki::new();
    expect_one(
        &pki,
        &LISTENER.replace("pki/server.key", "pki/client.key"),
        4,
        7,
        &format!(
            "listener[0].key: certificate {} does not match private key {}",
            pki.path("server.crt").display(),
            pki.path("client.key").display()
        ),
    );
}

#[test]
fn client_auth_required_without_client_ca() {
    let pki = Pki::new();
    let no_ca = LISTENER.replace("client_ca = \"pki/ca.crt\"\n", "");
    // Written explicitly: reported at client_auth.
    expect_one(
        &pki,
        &format!("{no_ca}client_auth = \"required\"\n"),
        6,
        15,
        "listener[0].client_ca: missing; client_auth = \"required\" needs the CA bundle that signs client certificates; set client_ca, or set client_auth = \"off\"",
    );
    // By default: reported at the listener.
    expect_one(
        &pki,
        &no_ca,
        1,
        1,
        "listener[0].client_ca: missing; client_auth = \"required\" (the default) needs the CA bundle that signs client certificates; set client_ca, or set client_auth = \"off\"",
    );
}

#[test]
fn bad_client_auth_value() {
    let pki = Pki::new();
    expect_one(
        &pki,
        &format!("{LISTENER}client_auth = \"maybe\"\n"),
        7,
        15,
        "listener[0].client_auth: must be \"required\", \"optional\" or \"off\", not \"maybe\"",
    );
}

#[test]
fn no_listeners() {
    let pki = Pki::new();
    expect_one(
        &pki,
        "workers = 2\n",
        1,
        1,
        "listener: no [[listener]] table; at least one is required",
    );
    expect_one(
        &pki,
        "",
        1,
        1,
        "listener: no [[listener]] table; at least one is required",
    );
}

#[test]
fn no_backends() {
    let pki = Pki::new();
    let text = LISTENER.replace("backends = [\"127.0.0.1:8080\"]\n", "");
    expect_one(
        &pki,
        &format!("\n{text}"),
        2,
        1,
        "listener[0].backends: missing; at least one backend (host:port) is required",
    );
    expect_one(
        &pki,
        &format!("{text}backends = []\n"),
        6,
        12,
        "listener[0].backends: at least one backend (host:port) is required",
    );
    expect_one(
        &pki,
        &format!("{text}backends = [\"localhost\"]\n"),
        6,
        13,
        "listener[0].backends[0]: backend \"localhost\" is not host:port (e.g. \"127.0.0.1:8080\" or \"app.internal:8080\")",
    );
}

#[test]
fn all_problems_are_reported_together() {
    let pki = Pki::new();
    let text = format!(
        "handshake_timeout = \"soon\"\n{}{}",
        LISTENER.replace("\"127.0.0.1:8443\"", "\"127.0.0.1\""),
        LISTENER
            .replace("8443", "9443")
            .replace("pki/server.crt", "pki/gone.crt")
    );
    let (path, errs) = errors(&pki, &text);
    let p = path.display();
    assert_eq!(
        errs,
        vec![
            format!("{p}:1:21: handshake_timeout: unit \"soon\" has no number before it; expected e.g. \"10s\", \"250ms\", \"1m30s\" or a number of seconds"),
            format!("{p}:3:10: listener[0].listen: \"127.0.0.1\" is not an IP address with a port (e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")"),
            format!(
                "{p}:10:8: listener[1].cert: cannot read {}: No such file or directory",
                pki.path("gone.crt").display()
            ),
        ]
    );
}

#[test]
fn range_and_list_checks() {
    let pki = Pki::new();
    let text = format!(
        "workers = 0\nmax_connections = -5\n{LISTENER}backlog = 100000\nname = \"a b\"\ntls_versions = [\"1.1\"]\ncipher_suites = [\"AES_128_GCM\", \"aes_128_gcm\"]\nalpn = [\"\"]\n"
    );
    let (path, errs) = errors(&pki, &text);
    let p = path.display();
    assert_eq!(
        errs,
        vec![
            format!("{p}:1:11: workers: must be between 1 and 1024, not 0"),
            format!("{p}:2:19: max_connections: must be between 1 and 10000000, not -5"),
            format!("{p}:10:8: listener[0].name: \"a b\" is not a valid name; use letters, digits, '-', '_' or '.'"),
            format!("{p}:9:11: listener[0].backlog: must be between 1 and 65535, not 100000"),
            format!("{p}:13:9: listener[0].alpn[0]: ALPN protocol \"\" must be 1 to 255 bytes long"),
            format!("{p}:11:17: listener[0].tls_versions[0]: unknown TLS version \"1.1\"; use \"1.2\" or \"1.3\""),
            format!("{p}:12:33: listener[0].cipher_suites[1]: \"aes_128_gcm\" is listed twice"),
        ]
    );
}

#[test]
fn expired_server_certificate_is_a_warning() {
    let pki = Pki::new();
    let c = load_file(&write(
        &pki,
        &LISTENER.replace("pki/server.crt", "pki/expired.crt"),
    ))
    .unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = c.warnings[0].to_string();
    let want = format!(
        "{}:3:8: listener[0].cert: {}: certificate #1 (CN=rcgen self signed cert) expired at 2001-01-01T00:00:00Z",
        pki.root().join("tlsplice.toml").display(),
        pki.path("expired.crt").display()
    );
    assert_eq!(w, want);
}

#[test]
fn client_ca_with_auth_off_is_a_warning() {
    let pki = Pki::new();
    let c = load_file(&write(&pki, &format!("{LISTENER}client_auth = \"off\"\n"))).unwrap();
    assert_eq!(c.listeners[0].tls.client_auth, ClientAuth::Off);
    assert!(c.listeners[0].tls.client_ca.is_empty());
    let w: Vec<String> = c.warnings.iter().map(|w| w.field.clone()).collect();
    assert_eq!(w, vec!["listener[0].client_ca"]);
    assert!(c.warnings[0].message.contains("ignored"));
}

#[test]
fn unreadable_and_non_utf8_config_files() {
    let pki = Pki::new();
    let missing = pki.root().join("none.toml");
    let e = load_file(&missing).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{0}:1:1: (file): cannot read {0}: No such file or directory",
            missing.display()
        )
    );
    let bad = pki.root().join("bad.toml");
    fs::write(&bad, b"workers = 1\nname = \"\xff\"\n").unwrap();
    let e = load_file(&bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:2:9: (file): file is not valid UTF-8", bad.display())
    );
}

fn flags(pki: &Pki) -> Flags {
    Flags {
        listen: vec!["127.0.0.1:8443".into(), "[::1]:8443".into()],
        cert: Some(pki.path("server.crt")),
        key: Some(pki.path("server.key")),
        client_ca: Some(pki.path("ca.crt")),
        backends: vec!["127.0.0.1:8080".into()],
        ..Flags::default()
    }
}

fn flag_errors(f: &Flags) -> Vec<String> {
    match from_flags(f) {
        Ok(_) => panic!("flags unexpectedly valid: {f:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn flags_happy_path() {
    let pki = Pki::new();
    let f = Flags {
        workers: Some(2),
        alpn: vec!["http/1.1".into()],
        handshake_timeout: Some("3s".into()),
        idle_timeout: Some("10".into()),
        max_connections: Some(5),
        max_handshakes: Some(3),
        client_auth: Some("optional".into()),
        ..flags(&pki)
    };
    let c = from_flags(&f).unwrap();
    assert_eq!(c.workers, 2);
    assert_eq!(c.handshake_timeout, Duration::from_secs(3));
    assert_eq!(c.idle_timeout, Duration::from_secs(10));
    assert_eq!(c.max_connections_per_worker, 5);
    assert_eq!(c.max_handshakes_per_worker, 3);
    assert_eq!(c.source, None);
    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.name, "listener0");
    assert_eq!(l.listen, vec![addr("127.0.0.1:8443"), addr("[::1]:8443")]);
    assert_eq!(l.tls.client_auth, ClientAuth::Optional);
    assert_eq!(l.tls.alpn, vec![b"http/1.1".to_vec()]);
    assert_eq!(l.tls.client_ca_path, Some(pki.path("ca.crt")));

    // Client auth off needs no CA.
    let f = Flags {
        client_auth: Some("off".into()),
        client_ca: None,
        ..flags(&pki)
    };
    assert_eq!(
        from_flags(&f).unwrap().listeners[0].tls.client_auth,
        ClientAuth::Off
    );
}

#[test]
fn flags_missing() {
    assert_eq!(
        flag_errors(&Flags::default()),
        vec![
            "--listen: missing; pass --listen ADDR (e.g. 127.0.0.1:8443) at least once",
            "--cert: missing; the server certificate chain file is required (pass --cert)",
            "--key: missing; the server private key file is required (pass --key)",
            "--client-ca: missing; client certificates are required by default and need a CA bundle; pass --client-ca FILE, or --client-auth off",
            "--backend: missing; at least one backend (host:port) is required",
        ]
    );
}

#[test]
fn flags_bad_values() {
    let pki = Pki::new();
    let f = Flags {
        listen: vec!["127.0.0.1:8443".into(), "nope".into()],
        key: Some(pki.path("client.key")),
        client_auth: Some("maybe".into()),
        workers: Some(0),
        drain_timeout: Some("1.5s".into()),
        backends: vec!["127.0.0.1".into()],
        ..flags(&pki)
    };
    assert_eq!(
        flag_errors(&f),
        vec![
            "--workers: must be between 1 and 1024, not 0".to_string(),
            "--drain-timeout: fractions are not supported; use a smaller unit, e.g. \"1500ms\" for 1.5s".to_string(),
            "--listen: \"nope\" is not an IP address with a port (e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")".to_string(),
            format!(
                "--key: certificate {} does not match private key {}",
                pki.path("server.crt").display(),
                pki.path("client.key").display()
            ),
            "--client-auth: must be \"required\", \"optional\" or \"off\", not \"maybe\"".to_string(),
            "--backend: backend \"127.0.0.1\" is not host:port (e.g. \"127.0.0.1:8080\" or \"app.internal:8080\")".to_string(),
        ]
    );
}

#[test]
fn flags_missing_cert_file_names_it() {
    let pki = Pki::new();
    let f = Flags {
        cert: Some(PathBuf::from("/nonexistent/server.crt")),
        ..flags(&pki)
    };
    assert_eq!(
        flag_errors(&f),
        vec!["--cert: cannot read /nonexistent/server.crt: No such file or directory"]
    );
}

/// Each example config must load once the dev PKI sits beside it.
#[test]
fn example_configs_load() {
    let examples: [(&str, &str); 3] = [
        (
            "quickstart.toml",
            include_str!("../../configs/quickstart.toml"),
        ),
        ("sidecar.toml", include_str!("../../configs/sidecar.toml")),
        ("edge.toml", include_str!("../../configs/edge.toml")),
    ];
    let pki = Pki::new();
    for (name, text) in examples {
        let path = pki.root().join(name);
        fs::write(&path, text).unwrap();
        let c = load_file(&path).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert!(c.warnings.is_empty(), "{name}: {:?}", c.warnings);
        check_example(name, &c, pki.root());
    }
}

fn check_example(name: &str, c: &Config, root: &Path) {
    let first = &c.listeners[0];
    assert_eq!(first.tls.cert_path, root.join("pki/server.crt"), "{name}");
    match name {
        "quickstart.toml" => {
            assert_eq!(first.listen, vec![addr("127.0.0.1:8443")]);
            assert_eq!(first.tls.client_auth, ClientAuth::Required);
            assert_eq!(first.backends[0].addr, addr("127.0.0.1:9000"));
        }
        "sidecar.toml" => {
            assert_eq!(c.workers, 2);
            assert_eq!(first.listen, vec![addr("0.0.0.0:8443"), addr("[::]:8443")]);
            assert_eq!(first.tls.client_auth, ClientAuth::Required);
            assert_eq!(first.backends.len(), 1);
        }
        "edge.toml" => {
            assert_eq!(c.listeners.len(), 2);
            assert_eq!(first.tls.client_auth, ClientAuth::Required);
            assert_eq!(c.listeners[1].tls.client_auth, ClientAuth::Optional);
            assert!(first.backends.len() > 1);
            assert!(!first.tls.alpn.is_empty());
        }
        _ => unreachable!(),
    }
}

/// Found by the config fuzz target: a control character in a comment made
/// the parser's error message empty.
#[test]
fn control_character_in_comment_is_named() {
    let pki = Pki::new();
    let (_, errs) = errors(&pki, &format!("# a \u{15} b\n{LISTENER}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains(":1:") && errs[0].contains("control character U+0015"),
        "{errs:?}"
    );
}
