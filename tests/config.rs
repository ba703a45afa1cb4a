//! Config files: `tlsplice check` on the shipped examples and on broken
//! files (every problem as `FILE:LINE:COL: FIELD: MESSAGE`, exit 1), and
//! `serve -c` end to end.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// One `FILE:LINE:COL: FIELD: MESSAGE` diagnostic.
#[derive(Debug)]
struct Diag {
    line: usize,
    col: usize,
    field: String,
    message: String,
}

fn parse_diag(text: &str, file: &Path) -> Option<Diag> {
    let rest = text.strip_prefix(&format!("{}:", file.display()))?;
    let mut parts = rest.splitn(4, ':');
    let line = parts.next()?.trim().parse().ok()?;
    let col = parts.next()?.trim().parse().ok()?;
    let field = parts.next()?.trim().to_string();
    let message = parts.next()?.trim().to_string();
    Some(Diag {
        line,
        col,
        field,
        message,
    })
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

/// A temp dir with the standard PKI files beside where configs go.
struct Dir {
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let pki = Pki::new();
        let dir = tempfile::Builder::new()
            .prefix("tlsplice-config-")
            .tempdir()
            .unwrap();
        pki.write_standard_files(dir.path());
        pki.write_standard_files(&dir.path().join("pki"));
        Dir { pki, dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        write_file(self.path(), name, text)
    }
}

fn minimal(backend: &str) -> String {
    format!(
        "[[listener]]\n\
         listen = \"127.0.0.1:0\"\n\
         cert = \"server.crt\"\n\
         key = \"server.key\"\n\
         client_auth = \"required\"\n\
         client_ca = \"ca.crt\"\n\
         backends = [\"{backend}\"]\n"
    )
}

/// Runs `check -c FILE`, expects exit 1 and returns the diagnostics; every
/// stderr line that names the file must be a well-formed diagnostic.
fn check_fails(file: &Path) -> (Vec<Diag>, String) {
    let (status, out, err) = run_tlsplice(&["check", "-c", file.to_str().unwrap()], None);
    assert_eq!(
        status.code(),
        Some(1),
        "check should exit 1; stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(!out.contains(": ok"), "check printed ok: {out}");
    let mut diags = Vec::new();
    let prefix = format!("{}:", file.display());
    for l in err.lines() {
        // Lines `FILE:<digits>...` must be whole diagnostics; other lines
        // (a summary such as `FILE: 2 problem(s)`) are not checked.
        let numbered = l
            .strip_prefix(&prefix)
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
        if numbered {
            let d = parse_diag(l, file)
                .unwrap_or_else(|| panic!("not FILE:LINE:COL: FIELD: MESSAGE: {l:?}"));
            assert!(d.line >= 1 && d.col >= 1, "{l}");
            assert!(!d.field.is_empty() && !d.message.is_empty(), "{l}");
            diags.push(d);
        }
    }
    assert!(
        !diags.is_empty(),
        "no FILE:LINE:COL diagnostics on stderr:\n{err}"
    );
    (diags, err)
}

#[test]
fn minimal_config_passes_check() {
    let d = Dir::new();
    let file = d.write("tlsplice.toml", &minimal("127.0.0.1:9"));
    let (status, out, err) = run_tlsplice(&["check", "-c", file.to_str().unwrap()], None);
    assert!(status.success(), "check failed:\n{err}");
    assert_eq!(out.trim_end(), format!("{}: ok", file.display()));
}

#[test]
fn config_with_top_level_settings_passes_check() {
    let d = Dir::new();
    let text = format!(
        "workers = 2\nhandshake_timeout = \"5s\"\nidle_timeout = \"500ms\"\n\
         connect_timeout = \"2s\"\ndrain_timeout = \"10s\"\nmax_connections = 1000\n\n{}",
        minimal("127.0.0.1:9")
    );
    let file = d.write("full.toml", &text);
    let (status, out, err) = run_tlsplice(&["check", "-c", file.to_str().unwrap()], None);
    assert!(status.success(), "check failed:\n{err}");
    assert_eq!(out.trim_end(), format!("{}: ok", file.display()));
}

/// Every example in `configs/` passes `check` with a PKI beside it.
#[test]
fn example_configs_pass_check() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut examples: Vec<PathBuf> = fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{}: {e} (the example configs are missing)", src.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty(), "no configs/*.toml");
    let mut failures = Vec::new();
    for example in &examples {
        let d = Dir::new();
        add_edge_files(&d.path().join("pki"));
        let copy = d.path().join(example.file_name().unwrap());
        fs::copy(example, &copy).unwrap();
        let (status, out, err) = run_tlsplice(&["check", "-c", copy.to_str().unwrap()], None);
        if !status.success() || out.trim_end() != format!("{}: ok", copy.display()) {
            failures.push(format!(
                "{}: status {status}\nstdout: {out}\nstderr: {err}",
                example.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn unknown_key_is_reported_at_its_line() {
    let d = Dir::new();
    let text = minimal("127.0.0.1:9").replace(
        "client_auth = \"required\"\n",
        "client_auth = \"required\"\ntls_versoin = \"1.3\"\n",
    );
    let file = d.write("unknown.toml", &text);
    let (diags, err) = check_fails(&file);
    let want = line_of(&text, "tls_versoin");
    assert!(
        diags.iter().any(|d| d.line == want
            && (d.field.contains("tls_versoin") || d.message.contains("tls_versoin"))),
        "no diagnostic for the unknown key at line {want}:\n{err}"
    );
}

#[test]
fn bad_duration_is_reported_with_field() {
    let d = Dir::new();
    let text = format!(
        "handshake_timeout = \"10 parsecs\"\n{}",
        minimal("127.0.0.1:9")
    );
    let file = d.write("duration.toml", &text);
    let (diags, err) = check_fails(&file);
    assert!(
        diags
            .iter()
            .any(|d| d.line == 1 && d.field == "handshake_timeout"),
        "no `{}:1:COL: handshake_timeout: ...` diagnostic:\n{err}",
        file.display()
    );
}

#[test]
fn missing_cert_file_is_reported_with_field_and_path() {
    let d = Dir::new();
    let text = minimal("127.0.0.1:9").replace("server.crt", "missing.crt");
    let file = d.write("missing.toml", &text);
    let (diags, err) = check_fails(&file);
    let want = line_of(&text, "missing.crt");
    assert!(
        diags.iter().any(|d| d.line == want
            && d.field == "listener[0].cert"
            && d.message.contains("missing.crt")),
        "no `listener[0].cert` diagnostic naming missing.crt at line {want}:\n{err}"
    );
}

#[test]
fn required_without_client_ca_is_reported() {
    let d = Dir::new();
    let text = minimal("127.0.0.1:9").replace("client_ca = \"ca.crt\"\n", "");
    let file = d.write("noca.toml", &text);
    let (diags, err) = check_fails(&file);
    let lines = [
        line_of(&text, "client_auth"),
        line_of(&text, "[[listener]]"),
    ];
    assert!(
        diags.iter().any(|d| lines.contains(&d.line)
            && (d.field == "listener[0].client_ca" || d.field == "listener[0].client_auth")),
        "no client_ca/client_auth diagnostic at lines {lines:?}:\n{err}"
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let d = Dir::new();
    let text = format!(
        "idle_timeout = \"forever\"\n{}",
        minimal("127.0.0.1:9").replace("server.key", "nokey.key")
    );
    let file = d.write("many.toml", &text);
    let (diags, err) = check_fails(&file);
    assert!(
        diags
            .iter()
            .any(|d| d.line == 1 && d.field == "idle_timeout"),
        "idle_timeout not reported:\n{err}"
    );
    let key_line = line_of(&text, "nokey.key");
    assert!(
        diags
            .iter()
            .any(|d| d.line == key_line && d.field == "listener[0].key"),
        "listener[0].key not reported:\n{err}"
    );
}

/// "Every problem": an unknown key (or a wrongly typed value) must not hide
/// the other problems of the file.
#[test]
fn unknown_key_does_not_hide_other_problems() {
    let d = Dir::new();
    let text = format!(
        "idle_timeout = \"forever\"\n{}",
        minimal("127.0.0.1:9").replace(
            "cert = \"server.crt\"\n",
            "cert = \"missing.crt\"\ntls_versoin = \"1.3\"\n"
        )
    );
    let file = d.write("unknown-and-more.toml", &text);
    let (diags, err) = check_fails(&file);
    let unknown = line_of(&text, "tls_versoin");
    let cert = line_of(&text, "missing.crt");
    for (line, what) in [
        (unknown, "the unknown key"),
        (1, "idle_timeout"),
        (cert, "listener[0].cert"),
    ] {
        assert!(
            diags.iter().any(|d| d.line == line),
            "{what} (line {line}) not reported:\n{err}"
        );
    }
}

#[test]
fn bad_backend_address_is_reported() {
    let d = Dir::new();
    let text = minimal("no-port-here");
    let file = d.write("backend.toml", &text);
    let (diags, err) = check_fails(&file);
    let want = line_of(&text, "no-port-here");
    assert!(
        diags
            .iter()
            .any(|d| d.line == want && d.field.contains("backends")),
        "no backends diagnostic at line {want}:\n{err}"
    );
}

#[test]
fn toml_syntax_error_is_reported_with_position() {
    let d = Dir::new();
    let text = format!("{}listen = \n", minimal("127.0.0.1:9"));
    let file = d.write("syntax.toml", &text);
    let (status, _out, err) = run_tlsplice(&["check", "-c", file.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{err}");
    let prefix = format!("{}:", file.display());
    assert!(
        err.lines().any(|l| {
            l.strip_prefix(&prefix)
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= 7)
        }),
        "no FILE:LINE diagnostic for the syntax error:\n{err}"
    );
}

#[test]
fn missing_config_file_fails() {
    let d = Dir::new();
    let file = d.path().join("does-not-exist.toml");
    let (status, _out, err) = run_tlsplice(&["check", "-c", file.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("does-not-exist.toml"), "{err}");
}

/// `serve -c` with relative paths, started from another directory.
#[test]
fn serve_from_config_file() {
    let d = Dir::new();
    let backend = Backend::echo();
    let text = format!(
        "workers = 1\nhandshake_timeout = \"5s\"\n{}",
        minimal(&backend.addr.to_string())
    );
    let file = d.write("serve.toml", &text);
    let elsewhere = tempfile::tempdir().unwrap();
    let server = Server::spawn_in(
        &["serve".into(), "-c".into(), file.to_str().unwrap().into()],
        1,
        Some(elsewhere.path()),
    );
    let mut tls = tls_connect(server.addr(), ClientOpts::new(&d.pki).build()).expect("handshake");
    echo_round_trip(&mut tls, b"configured by file\n");
    assert_eq!(backend.accepted(), 1);
}

/// `serve -c` with a broken config refuses to start and prints the problems.
#[test]
fn serve_with_broken_config_exits_1() {
    let d = Dir::new();
    let text = minimal("127.0.0.1:9").replace("server.crt", "missing.crt");
    let file = d.write("broken.toml", &text);
    let (status, _out, err) = run_tlsplice(&["serve", "-c", file.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("listener[0].cert"), "{err}");
}
