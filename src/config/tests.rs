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

/// The TLS settings of a listener's own (default) route.
fn own_tls(l: &ListenerConfig) -> &TlsSettings {
    &l.default_route.as_ref().expect("a default route").tls
}

/// The backends of a listener's own (default) route.
fn own_backends(c: &Config, l: &ListenerConfig) -> Vec<Backend> {
    let pool = &l.default_route.as_ref().expect("a default route").pool;
    let pool = c.pools.iter().find(|p| p.name == *pool).expect("its pool");
    pool.backends.iter().map(|b| b.backend.clone()).collect()
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
    let tls = own_tls(main);
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
    assert_eq!(own_backends(&c, main)[0].addr, addr("127.0.0.1:8080"));
    assert_eq!(own_backends(&c, main)[1].name, "localhost:8081");
    assert_eq!(own_backends(&c, main)[1].addr.port(), 8081);
    assert!(own_backends(&c, main)[1].addr.ip().is_loopback());

    let second = &c.listeners[1];
    assert_eq!(second.name, "listener1");
    assert_eq!(second.backlog, 16);
    assert_eq!(own_tls(second).client_auth, ClientAuth::Off);
    assert!(own_tls(second).client_ca.is_empty());
    assert_eq!(own_tls(second).client_ca_path, None);
    assert!(own_tls(second).alpn.is_empty());
    assert_eq!(own_tls(second).versions, vec![TlsVersion::Tls13]);
    assert_eq!(
        own_tls(second).cipher_suites,
        vec![CipherSuite::Chacha20Poly1305, CipherSuite::Aes256Gcm]
    );
    assert_eq!(own_backends(&c, second)[0].addr, addr("127.0.0.1:9090"));
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
    let tls = own_tls(&c.listeners[0]);
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
    assert_eq!(
        own_tls(&c.listeners[0]).cert_path,
        etc.join("../pki/server.crt")
    );
    assert_eq!(
        own_tls(&c.listeners[0]).client_ca_path,
        Some(pki.path("ca.crt"))
    );
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
        "listener[0].backends: missing; at least one backend (host:port) is required, or a pool = \"NAME\"",
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
    assert_eq!(own_tls(&c.listeners[0]).client_auth, ClientAuth::Off);
    assert!(own_tls(&c.listeners[0]).client_ca.is_empty());
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
    assert_eq!(own_tls(l).client_auth, ClientAuth::Optional);
    assert_eq!(own_tls(l).alpn, vec![b"http/1.1".to_vec()]);
    assert_eq!(own_tls(l).client_ca_path, Some(pki.path("ca.crt")));

    // Client auth off needs no CA.
    let f = Flags {
        client_auth: Some("off".into()),
        client_ca: None,
        ..flags(&pki)
    };
    assert_eq!(
        own_tls(&from_flags(&f).unwrap().listeners[0]).client_auth,
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
    // edge.toml's two domains have certificates and a CA of their own.
    for (from, to) in [
        ("server.crt", "api.crt"),
        ("server.key", "api.key"),
        ("server.crt", "portal.crt"),
        ("server.key", "portal.key"),
        ("ca.crt", "partners-ca.crt"),
    ] {
        fs::copy(pki.path(from), pki.path(to)).unwrap();
    }
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
    match name {
        "quickstart.toml" => {
            assert_eq!(own_tls(first).cert_path, root.join("pki/server.crt"));
            assert_eq!(first.listen, vec![addr("127.0.0.1:8443")]);
            assert_eq!(own_tls(first).client_auth, ClientAuth::Required);
            assert_eq!(own_backends(c, first)[0].addr, addr("127.0.0.1:9000"));
        }
        "sidecar.toml" => {
            assert_eq!(own_tls(first).cert_path, root.join("pki/server.crt"));
            assert_eq!(c.workers, 2);
            assert_eq!(first.listen, vec![addr("0.0.0.0:8443"), addr("[::]:8443")]);
            assert_eq!(own_tls(first).client_auth, ClientAuth::Required);
            assert_eq!(own_backends(c, first).len(), 1);
        }
        "edge.toml" => {
            assert!(first.default_route.is_none());
            let [api, portal] = &first.routes[..] else {
                panic!("edge.toml has two routes")
            };
            assert_eq!(api.tls.cert_path, root.join("pki/api.crt"));
            assert_eq!(
                api.tls.client_ca_path,
                Some(root.join("pki/partners-ca.crt"))
            );
            assert_eq!(portal.tls.client_auth, ClientAuth::Optional);
            assert!(!api.tls.alpn.is_empty());
            let pool = |name: &str| c.pools.iter().find(|p| p.name == name).unwrap();
            assert_eq!(pool(&api.pool).balance, Balance::Hash);
            assert_eq!(pool(&api.pool).backends.len(), 3);
            assert!(pool(&api.pool).health_check.is_some());
            assert_eq!(pool(&portal.pool).balance, Balance::LeastConnections);
            let names: Vec<&str> = c.tiers.tiers().iter().map(|t| &*t.name).collect();
            assert_eq!(names, ["partner", "free"]);
            assert_eq!(c.tiers.default_tier().map(|t| &*t.name), Some("free"));
        }
        _ => unreachable!(),
    }
}

#[test]
fn tiers_parse_with_defaults_and_default_tier() {
    let pki = Pki::new();
    let path = write(
        &pki,
        &format!(
            r#"{LISTENER}
[[tier]]
name = "gold"
clients = ["cn:gold-*", "alias:acme=pki/client.crt"]
max_connections = 7

[[tier]]
name = "default"
new_connections_per_second = 50
bytes_per_second = 65536
"#
        ),
    );
    let c = load_file(&path).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let tiers = c.tiers.tiers();
    assert_eq!(tiers.len(), 2);
    assert_eq!(tiers[0].limits.max_connections, Some(7));
    assert_eq!(tiers[0].limits.new_connections, None);
    assert_eq!(tiers[0].clients.entries().len(), 2);
    let rate = tiers[1].limits.new_connections.unwrap();
    assert_eq!((rate.per_second, rate.burst), (50, 50));
    assert_eq!(tiers[1].limits.bytes_per_second, Some(65536));
    // No default_tier: the tier named "default" is the default.
    assert_eq!(c.tiers.default_tier().map(|t| &*t.name), Some("default"));
}

#[test]
fn tier_errors_name_file_line_and_field() {
    let pki = Pki::new();
    let base = LISTENER.lines().count();
    let (path, errs) = errors(
        &pki,
        &format!(
            r#"default_tier = "platinum"
{LISTENER}[[tier]]
name = "gold"
burst = 5
max_connections = 0
clients = ["cn:"]

[[tier]]
name = "gold"

[[tier]]
name = "bad name"
new_connections_per_second = 10
colour = "red"
"#
        ),
    );
    let p = path.display();
    let at = |line: usize, col: usize, rest: &str| {
        // Line 1 is default_tier, then the listener.
        let line = if line == 1 { 1 } else { base + line };
        format!("{p}:{line}:{col}: {rest}")
    };
    assert_eq!(
        errs,
        vec![
            at(
                14,
                1,
                "tier[2].colour: unknown field `colour`, expected one of `name`, `clients`, \
                 `new_connections_per_second`, `burst`, `max_connections`, `bytes_per_second`"
            ),
            at(4, 9, "tier[0].burst: burst needs new_connections_per_second in the same tier"),
            at(5, 19, "tier[0].max_connections: must be between 1 and 10000000, not 0"),
            at(6, 12, "tier[0].clients[0]: subject CN pattern is empty"),
            at(9, 8, "tier[1].name: tier \"gold\" is defined twice"),
            at(
                12,
                8,
                "tier[2].name: \"bad name\" is not a tier name: use letters, digits, `_`, `-` and `.`"
            ),
            at(
                1,
                16,
                "default_tier: no tier is named \"platinum\"; the tiers are \"gold\", \"bad name\""
            ),
        ],
    );
}

#[test]
fn client_cert_header_and_access_log() {
    let pki = Pki::new();
    let text = format!(
        "access_log = {{ format = \"json\" }}\n{LISTENER}client_cert_header = {{ format = \"xfcc\", name = \"x-client\" }}\n"
    );
    let c = load_file(&write(&pki, &text)).unwrap();
    assert_eq!(c.access_log, AccessLogFormat::Json);
    let h = c.listeners[0].client_cert_header.as_ref().unwrap();
    assert_eq!(
        (h.format, h.name.as_str(), h.max_head),
        (CertHeaderFormat::Xfcc, "x-client", 64 * 1024)
    );
    // An empty table means RFC 9440 under its default name.
    let text = format!("{LISTENER}client_cert_header = {{}}\n");
    let c = load_file(&write(&pki, &text)).unwrap();
    assert_eq!(c.access_log, AccessLogFormat::Text);
    let h = c.listeners[0].client_cert_header.as_ref().unwrap();
    assert_eq!(
        (h.format, h.name.as_str()),
        (CertHeaderFormat::Rfc9440, "Client-Cert")
    );
}

#[test]
fn unreachable_tier_is_a_warning() {
    let pki = Pki::new();
    let path = write(
        &pki,
        &format!("{LISTENER}[[tier]]\nname = \"lonely\"\nmax_connections = 1\n"),
    );
    let c = load_file(&path).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].to_string().ends_with(
            "tier[0]: tier \"lonely\" has no clients rules and is not the default tier: no client is ever in it"
        ),
        "{}",
        c.warnings[0]
    );
    assert!(c.tiers.default_tier().is_none());
}

#[test]
fn top_level_key_inside_a_table_gets_a_hint() {
    let pki = Pki::new();
    let (_, errs) = errors(&pki, &format!("{LISTENER}default_tier = \"x\"\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .ends_with("; `default_tier` is a top-level key: write it above the first [[table]]"),
        "{errs:?}"
    );
}

#[test]
fn client_cert_header_errors_name_their_field() {
    let pki = Pki::new();
    let text = format!("{LISTENER}client_cert_header = {{ format = \"pem\" }}\n");
    expect_one(
        &pki,
        &text,
        7,
        33,
        "listener[0].client_cert_header.format: must be one of \"rfc9440\", \"xfcc\", \"escaped-pem\", not \"pem\"",
    );
    let text =
        format!("{LISTENER}client_cert_header = {{ name = \"Client Cert\", max_head = 10 }}\n");
    let (_, errs) = errors(&pki, &text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains(
        "listener[0].client_cert_header.name: \"Client Cert\" is not an HTTP header name"
    ));
    assert!(errs[1].contains(
        "listener[0].client_cert_header.max_head: must be between 4096 and 1048576, not 10"
    ));
    let text = format!("{LISTENER}client_cert_header = {{ fromat = \"xfcc\" }}\n");
    let (_, errs) = errors(&pki, &text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains(":7:1: listener[0].client_cert_header.fromat: unknown field `fromat`, expected one of `format`, `name`, `max_head`"),
        "{errs:?}"
    );
    let text = format!("access_log = {{ format = \"xml\", color = 1 }}\n{LISTENER}");
    let (_, errs) = errors(&pki, &text);
    assert!(
        errs[0].contains(":1:1: access_log.color: unknown field `color`, expected one of `format`"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains(":1:25: access_log.format: must be \"text\" or \"json\", not \"xml\""),
        "{errs:?}"
    );
}

#[test]
fn client_ocsp_table() {
    let pki = Pki::new();
    let path = write(
        &pki,
        &format!(
            "{LISTENER}client_ocsp = {{ responder = \"http://127.0.0.1:8888/ocsp\", timeout = \"500ms\", fail = \"open\", cache_ttl = \"1m\" }}\n"
        ),
    );
    let c = load_file(&path).unwrap();
    let o = own_tls(&c.listeners[0]).client_ocsp.clone().unwrap();
    assert_eq!(
        o.responder.as_ref().map(|u| u.as_str()),
        Some("http://127.0.0.1:8888/ocsp")
    );
    assert_eq!(o.timeout, Duration::from_millis(500));
    assert!(o.fail_open);
    assert_eq!(o.cache_ttl, Duration::from_secs(60));

    // Defaults: AIA responder, 2 s, fail closed, 5 minutes.
    let path = write(
        &pki,
        &format!("{LISTENER}client_ocsp = {{ mode = \"check\" }}\n"),
    );
    let c = load_file(&path).unwrap();
    let o = own_tls(&c.listeners[0]).client_ocsp.clone().unwrap();
    assert_eq!(o, crate::tls::verify::OcspSettings::default());
    let path = write(
        &pki,
        &format!("{LISTENER}client_ocsp = {{ mode = \"off\" }}\n"),
    );
    assert!(own_tls(&load_file(&path).unwrap().listeners[0])
        .client_ocsp
        .is_none());
}

#[test]
fn client_ocsp_errors_name_the_field() {
    let pki = Pki::new();
    expect_one(
        &pki,
        &format!("{LISTENER}client_ocsp = {{ mode = \"always\" }}\n"),
        7,
        24,
        "listener[0].client_ocsp.mode: must be \"check\" or \"off\", not \"always\"",
    );
    expect_one(
        &pki,
        &format!("{LISTENER}client_ocsp = {{ responder = \"https://ocsp.example\" }}\n"),
        7,
        29,
        "listener[0].client_ocsp.responder: OCSP responder URL \"https://ocsp.example\" must use http:// (OCSP responses are signed; https is not supported)",
    );
    expect_one(
        &pki,
        &format!("{LISTENER}client_ocsp = {{ timeout = \"1m\" }}\n"),
        7,
        27,
        "listener[0].client_ocsp.timeout: must be at most 30s: a query holds up its worker's handshakes that long",
    );
    expect_one(
        &pki,
        &format!("{LISTENER}client_ocsp = {{ fail = \"maybe\" }}\n"),
        7,
        24,
        "listener[0].client_ocsp.fail: must be \"closed\" or \"open\", not \"maybe\"",
    );
    let (path, errs) = errors(
        &pki,
        &format!("{LISTENER}client_ocsp = {{ mdoe = \"check\" }}\n"),
    );
    let want = format!(
        "{}:7:1: listener[0].client_ocsp.mdoe: unknown field `mdoe`, expected one of `mode`, `responder`",
        path.display()
    );
    assert!(errs[0].starts_with(&want), "{errs:?}");
}

#[test]
fn client_ocsp_flags() {
    let pki = Pki::new();
    let f = Flags {
        client_ocsp_responder: Some("http://[::1]:9/".into()),
        client_ocsp_fail: Some("open".into()),
        ..flags(&pki)
    };
    // Any --client-ocsp-* flag turns checking on.
    let c = from_flags(&f).unwrap();
    let o = own_tls(&c.listeners[0]).client_ocsp.clone().unwrap();
    assert!(o.fail_open);
    let f = Flags {
        client_ocsp: Some("yes".into()),
        client_ocsp_timeout: Some("0s".into()),
        ..flags(&pki)
    };
    assert_eq!(
        flag_errors(&f),
        vec![
            "--client-ocsp: must be \"check\" or \"off\", not \"yes\"".to_string(),
            "--client-ocsp-timeout: must be greater than zero".to_string(),
        ]
    );
    // Ignored, with a warning, when client certificates are off.
    let f = Flags {
        client_ocsp: Some("check".into()),
        client_auth: Some("off".into()),
        client_ca: None,
        ..flags(&pki)
    };
    let c = from_flags(&f).unwrap();
    assert!(own_tls(&c.listeners[0]).client_ocsp.is_none());
    assert_eq!(
        c.warnings[0].to_string(),
        "--client-ocsp: ignored because --client-auth is off"
    );
}

#[test]
fn client_cert_header_excludes_proxy_protocol() {
    let pki = Pki::new();
    let text = format!("{LISTENER}proxy_protocol = \"v2\"\nclient_cert_header = {{}}\n");
    expect_one(
        &pki,
        &text,
        8,
        22,
        "listener[0].client_cert_header: cannot be combined with listener[0].proxy_protocol = \"v2\" on the same listener; a backend gets the client's identity one way",
    );
    // "off" is no conflict.
    let text = format!("{LISTENER}proxy_protocol = \"off\"\nclient_cert_header = {{}}\n");
    assert!(load_file(&write(&pki, &text)).is_ok());
    // The flags go through the same check.
    let errs = flag_errors(&Flags {
        proxy_protocol: Some("v1".into()),
        client_cert_header_name: Some("x-cert".into()),
        ..flags(&pki)
    });
    assert_eq!(
        errs,
        ["--client-cert-header: cannot be combined with --proxy-protocol = \"v1\" on the same listener; a backend gets the client's identity one way"]
    );
    let errs = flag_errors(&Flags {
        client_cert_header: Some("envoy".into()),
        access_log: Some("yaml".into()),
        ..flags(&pki)
    });
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("--access-log: must be")));
    assert!(errs
        .iter()
        .any(|e| e.starts_with("--client-cert-header: must be one of")));
}

#[test]
fn proxy_protocol_cert_tlv_values() {
    let pki = Pki::new();
    let tlv = |value: &str| {
        let text =
            format!("{LISTENER}proxy_protocol = \"v2\"\nproxy_protocol_cert_tlv = \"{value}\"\n");
        load_file(&write(&pki, &text)).map(|c| c.listeners[0].proxy_protocol_cert_tlv)
    };
    let der = |kind| {
        Some(CertTlv {
            kind,
            content: CertTlvContent::Der,
        })
    };
    assert_eq!(tlv("der:0xE2").unwrap(), der(0xE2));
    assert_eq!(tlv("der:239").unwrap(), der(0xEF));
    assert_eq!(tlv("sha256").unwrap(), Some(CertTlv::default()));
    assert_eq!(tlv("off").unwrap(), None);
    let text = format!("{LISTENER}proxy_protocol = \"v2\"\n");
    assert_eq!(
        load_file(&write(&pki, &text)).unwrap().listeners[0].proxy_protocol_cert_tlv,
        Some(CertTlv::default())
    );
    for (value, why) in [
        ("der:0xE1", "other than 0xE1"),
        ("der:0x20", "custom type"),
        ("der:x", "custom type"),
        ("pem", "is not"),
        ("off:0xE2", "is not"),
    ] {
        let e = tlv(value).unwrap_err().to_string();
        assert!(
            e.contains(":8:27: listener[0].proxy_protocol_cert_tlv: ") && e.contains(why),
            "{value}: {e}"
        );
    }
    // Without PROXY v2 the setting is only a warning.
    let text = format!("{LISTENER}proxy_protocol_cert_tlv = \"der\"\n");
    let c = load_file(&write(&pki, &text)).unwrap();
    assert!(c.warnings[0]
        .to_string()
        .contains("has no effect without listener[0].proxy_protocol = \"v2\""));
}

#[test]
fn client_alias_tables() {
    let pki = Pki::new();
    let client = pki.path("client.crt");
    let text = format!(
        "{LISTENER}\n[[listener.clients]]\nalias = \"billing\"\ncert = \"{}\"\n",
        client.display()
    );
    let c = load_file(&write(&pki, &text)).unwrap();
    let der = crate::tls::certs::load_certs(&client).unwrap().remove(0);
    let who = own_tls(&c.listeners[0]).allowlist.identify(&der).unwrap();
    assert_eq!(who.label(), "billing");
    assert!(c.files().contains(&client));

    let (path, errs) = errors(
        &pki,
        &format!("{LISTENER}\n[[listener.clients]]\nalias = \"x\"\n"),
    );
    assert_eq!(
        errs,
        vec![format!(
            "{}:8:1: listener[0].clients[0].cert: missing; the client's certificate file is required",
            path.display()
        )]
    );
    let (path, errs) = errors(
        &pki,
        &format!(
            "{LISTENER}\n[[listener.clients]]\nalias = \"x\"\ncert = \"{}\"\npassword_env = \"P\"\n",
            client.display()
        ),
    );
    assert_eq!(
        errs,
        vec![format!(
            "{}:11:16: listener[0].clients[0].password_env: not used: {} is not a PKCS#12 file (.p12/.pfx)",
            path.display(),
            client.display()
        )]
    );
    let (path, errs) = errors(
        &pki,
        &format!("{LISTENER}\n[[listener.clients]]\nalias = \"x\"\ncolour = 1\n"),
    );
    let want = format!(
        "{}:10:1: listener[0].clients[0].colour: unknown field `colour`, expected one of `alias`, `cert`",
        path.display()
    );
    assert!(errs[0].starts_with(&want), "{errs:?}");
}

const ROUTES: &str = r#"[[pool]]
name = "api"
balance = "least-connections"
backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3, max_connections = 50 }]
health_check = { interval = "100ms", timeout = "50ms", rise = 1, fall = 2 }
eject_after = 0

[[listener]]
name = "edge"
listen = "127.0.0.1:8443"

[[listener.route]]
name = "api"
server_names = ["API.example.com", "*.api.example.com"]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
pool = "api"

[[listener.route]]
server_names = "www.example.com"
cert = "pki/server.crt"
key = "pki/server.key"
client_auth = "off"
alpn = ["h2"]
backends = ["127.0.0.1:9003"]
"#;

#[test]
fn routes_and_pools() {
    let pki = Pki::new();
    let c = load_file(&write(&pki, ROUTES)).unwrap();
    let l = &c.listeners[0];
    assert!(l.default_route.is_none());
    assert_eq!(l.routes.len(), 2);
    let (api, www) = (&l.routes[0], &l.routes[1]);
    assert_eq!(api.name, "api");
    assert_eq!(
        api.server_names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["api.example.com", "*.api.example.com"]
    );
    assert_eq!(api.pool, "api");
    assert_eq!(www.name, "route1");
    assert_eq!(www.tls.client_auth, ClientAuth::Off);
    assert_eq!(www.tls.alpn, vec![b"h2".to_vec()]);
    // The inline backends became an implicit round-robin pool.
    assert_eq!(www.pool, "edge/route1");
    assert_eq!(c.pools.len(), 2);
    let pool = &c.pools[0];
    assert_eq!(pool.balance, Balance::LeastConnections);
    assert_eq!(pool.backends[1].weight, 3);
    assert_eq!(pool.backends[1].max_connections, Some(50));
    assert_eq!(pool.backends[0].weight, 1);
    assert_eq!(
        pool.health_check,
        Some(HealthCheck {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            rise: 1,
            fall: 2
        })
    );
    assert_eq!(pool.eject_after, None, "0 turns passive ejection off");
    let implicit = &c.pools[1];
    assert_eq!(implicit.balance, Balance::RoundRobin);
    assert_eq!(implicit.eject_after, None);
    assert!(implicit.health_check.is_none());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn route_and_pool_mistakes_are_each_reported() {
    let pki = Pki::new();
    let text = ROUTES
        .replace("pool = \"api\"", "pool = \"apis\"")
        .replace("\"www.example.com\"", "[\"www.*.com\"]")
        .replace("balance = \"least-connections\"", "balance = \"random\"")
        .replace("rise = 1", "rise = 0")
        .replace(
            "listen = \"127.0.0.1:8443\"",
            "listen = \"127.0.0.1:8443\"\nclient_ca = \"pki/ca.crt\"",
        )
        .replace("alpn = [\"h2\"]", "alpn = [\"h2\"]\npool = \"api\"");
    let (path, errs) = errors(&pki, &text);
    let p = path.display();
    assert_eq!(
        errs,
        vec![
            format!("{p}:3:11: pool[0].balance: must be \"round-robin\", \"least-connections\" or \"hash\", not \"random\""),
            format!("{p}:5:63: pool[0].health_check.rise: must be between 1 and 100, not 0"),
            format!("{p}:19:8: listener[0].route[0].pool: no [[pool]] is named \"apis\"; defined: none"),
            format!("{p}:22:17: listener[0].route[1].server_names[0]: \"www.*.com\": a wildcard must be the whole first label, as in \"*.example.com\""),
            format!("{p}:27:8: listener[0].route[1].pool: give either backends or pool, not both"),
            format!("{p}:11:13: listener[0].client_ca: not used: this listener has routes and no default route (no cert, key or backends of its own); set it on a [[listener.route]]"),
        ]
    );
}

#[test]
fn route_names_and_pool_references() {
    let pki = Pki::new();
    expect_one(
        &pki,
        &ROUTES.replace("name = \"api\"\nserver_names", "name = \"default\"\nserver_names"),
        13,
        8,
        "listener[0].route[0].name: \"default\" names the listener's own route; choose another name",
    );
    let unused = ROUTES.replace("pool = \"api\"", "backends = \"127.0.0.1:9004\"");
    let c = load_file(&write(&pki, &unused)).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0]
            .to_string()
            .ends_with("pool[0].name: pool \"api\" is not used by any route"),
        "{}",
        c.warnings[0]
    );
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

#[test]
fn a_malformed_header_is_reported_as_syntax_not_an_empty_field() {
    let pki = Pki::new();
    let (path, errs) = errors(&pki, &format!("{LISTENER}[]\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    let prefix = format!("{}:", path.display());
    assert!(errs[0].starts_with(&prefix), "{errs:?}");
    assert!(!errs[0].contains(": : "), "empty field in {errs:?}");
    assert!(errs[0].contains("(syntax)"), "{errs:?}");
}

#[test]
fn ktls_offload_thresholds() {
    let pki = Pki::new();
    let c = load_file(&write(&pki, LISTENER)).unwrap();
    assert!(c.ktls_offload.at_once(), "{:?}", c.ktls_offload);
    let text =
        format!("ktls_offload = {{ after_bytes = \"64KiB\", after = \"50ms\" }}\n{LISTENER}");
    let c = load_file(&write(&pki, &text)).unwrap();
    assert_eq!(
        c.ktls_offload,
        OffloadPolicy {
            after_bytes: 64 * 1024,
            after: Duration::from_millis(50)
        }
    );
    let text = format!("ktls_offload = {{ after_bytes = 1000 }}\n{LISTENER}");
    let c = load_file(&write(&pki, &text)).unwrap();
    assert_eq!(c.ktls_offload.after_bytes, 1000);
    assert!(c.ktls_offload.after.is_zero());
    // Thresholds with ktls = "off" do nothing: a warning says so.
    let text = format!("ktls = \"off\"\nktls_offload = {{ after = \"1s\" }}\n{LISTENER}");
    let c = load_file(&write(&pki, &text)).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0]
        .to_string()
        .contains("ktls_offload thresholds have no effect"));
}

#[test]
fn ktls_offload_errors_name_their_field() {
    let pki = Pki::new();
    let text = format!("ktls_offload = {{ after_bytes = \"64KB\", after = \"fast\" }}\n{LISTENER}");
    let (_, errs) = errors(&pki, &text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains(":1:32: ktls_offload.after_bytes: unknown size unit \"KB\""),
        "{errs:?}"
    );
    assert!(
        errs[1].contains(":1:48: ktls_offload.after: unit \"fast\" has no number before it"),
        "{errs:?}"
    );
    let text = format!("ktls_offload = {{ after_bytes = -1 }}\n{LISTENER}");
    expect_one(
        &pki,
        &text,
        1,
        32,
        "ktls_offload.after_bytes: must not be negative, not -1",
    );
    let text = format!("ktls_offload = {{ bytes = 10 }}\n{LISTENER}");
    let (_, errs) = errors(&pki, &text);
    assert!(
        errs[0].contains(
            ":1:1: ktls_offload.bytes: unknown field `bytes`, expected one of `after_bytes`, `after`"
        ),
        "{errs:?}"
    );
    // The flags go through the same checks.
    let errs = flag_errors(&Flags {
        ktls_offload_after_bytes: Some("1 MB".into()),
        ktls_offload_after: Some("1.5s".into()),
        ..flags(&pki)
    });
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("--ktls-offload-after-bytes: unknown size unit \"MB\""),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("--ktls-offload-after: fractions"),
        "{errs:?}"
    );
    let f = Flags {
        ktls_offload_after_bytes: Some("1MiB".into()),
        ..flags(&pki)
    };
    assert_eq!(from_flags(&f).unwrap().ktls_offload.after_bytes, 1 << 20);
}

#[test]
fn sizes() {
    use super::validate::parse_size;
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    assert!(parse_size("").is_err());
    assert!(parse_size("KiB").is_err());
    assert!(parse_size("1.5MiB").is_err());
    assert!(parse_size("99999999999999999999GiB").is_err());
}

#[test]
fn backend_tls_beside_backends_makes_a_tls_pool() {
    let pki = Pki::new();
    let text = format!(
        "{LISTENER}backend_tls = {{ ca = \"pki/ca.crt\", cert = \"pki/client.crt\", key = \"pki/client.key\", server_name = \"api.internal\", alpn = [\"h2\"] }}\n"
    );
    let c = load_file(&write(&pki, &text)).unwrap();
    let route = c.listeners[0].default_route.as_ref().unwrap();
    let pool = c.pools.iter().find(|p| p.name == route.pool).unwrap();
    let t = pool.tls.as_ref().expect("the implicit pool speaks TLS");
    assert!(t.verify);
    assert_eq!(t.ca_path, Some(pki.path("ca.crt")));
    assert_eq!(
        t.identity.as_ref().unwrap().cert_path,
        pki.path("client.crt")
    );
    assert_eq!(t.alpn, Some(vec![b"h2".to_vec()]));
    assert_eq!(
        t.server_name,
        Some(rustls::pki_types::ServerName::try_from("api.internal").unwrap())
    );
    assert!(
        c.files().contains(&pki.path("client.key")),
        "backend TLS files are watched for reload"
    );
}

#[test]
fn backend_tls_problems_are_reported_at_their_keys() {
    let pki = Pki::new();
    // No CA while verifying; a key that is not the certificate's; a bad name.
    let (path, errs) = errors(
        &pki,
        &format!(
            "{LISTENER}backend_tls = {{ cert = \"pki/client.crt\", key = \"pki/server.key\", server_name = \"not a name\" }}\n"
        ),
    );
    let at = |rest: &str| format!("{}:7:{rest}", path.display());
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with(&at("15: listener[0].backend_tls.ca: missing")),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("listener[0].backend_tls.key: certificate"),
        "{errs:?}"
    );
    assert!(
        errs[2].contains("listener[0].backend_tls.server_name: \"not a name\" is not a DNS name"),
        "{errs:?}"
    );

    // Unknown keys inside the table are named with the table's keys.
    let (path, errs) = errors(
        &pki,
        &format!("{LISTENER}backend_tls = {{ ca = \"pki/ca.crt\", sni = \"x\" }}\n"),
    );
    let want = format!(
        "{}:7:1: listener[0].backend_tls.sni: unknown field `sni`, expected one of `ca`, `cert`",
        path.display()
    );
    assert!(errs[0].starts_with(&want), "{errs:?}");
}

#[test]
fn backend_tls_in_a_pool_and_not_beside_a_pool_reference() {
    let pki = Pki::new();
    let listener = LISTENER.replace("backends = [\"127.0.0.1:8080\"]", "pool = \"api\"");
    let pool = "[[pool]]\nname = \"api\"\nbackends = [\"127.0.0.1:9443\"]\n";
    let text = format!(
        "{listener}\n{pool}backend_tls = {{ verify = false, cert = \"pki/client.crt\", key = \"pki/client.key\" }}\n"
    );
    let c = load_file(&write(&pki, &text)).unwrap();
    let api = c.pools.iter().find(|p| p.name == "api").unwrap();
    let t = api.tls.as_ref().expect("pool api speaks TLS");
    assert!(!t.verify && t.ca.is_empty() && t.identity.is_some());
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0]
            .to_string()
            .contains("pool[0].backend_tls.verify: backend certificates are not verified"),
        "{:?}",
        c.warnings
    );

    // The table belongs to the pool, not to what refers to it.
    let text = format!("{listener}backend_tls = {{ ca = \"pki/ca.crt\" }}\n\n{pool}");
    let (_, errs) = errors(&pki, &text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("listener[0].backend_tls: not used with pool = \"api\": set backend_tls in that [[pool]]"),
        "{errs:?}"
    );

    // Unknown keys in a pool's table.
    let text = format!("{listener}\n{pool}backend_tls = {{ ca = \"pki/ca.crt\", sni = \"x\" }}\n");
    let (_, errs) = errors(&pki, &text);
    assert!(
        errs[0].contains("pool[0].backend_tls.sni: unknown field `sni`"),
        "{errs:?}"
    );
}

#[test]
fn backend_tls_flags_go_through_the_same_validator() {
    let pki = Pki::new();
    let f = Flags {
        backend_tls_ca: Some(pki.path("ca.crt")),
        backend_tls_cert: Some(pki.path("client.crt")),
        backend_tls_key: Some(pki.path("client.key")),
        backend_tls_name: Some("localhost".into()),
        ..flags(&pki)
    };
    let c = from_flags(&f).unwrap();
    assert!(c.pools.iter().all(|p| p.tls.is_some()));

    let f = Flags {
        backend_tls_cert: Some(pki.path("client.crt")),
        ..flags(&pki)
    };
    let errs = flag_errors(&f);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("--backend-tls-ca: missing"), "{errs:?}");
    assert!(
        errs[1].starts_with("--backend-tls-key: missing"),
        "{errs:?}"
    );
}
