//! `tlsplice quickstart`: dev PKI, built-in backend, terminator, and the
//! printed commands work exactly as printed; SIGINT stops it cleanly.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const PKI_FILES: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
];

struct Quickstart {
    child: Child,
    stdout: LogBuf,
    stderr: LogBuf,
    addr: SocketAddr,
    curl: String,
    openssl: String,
}

impl Quickstart {
    /// Starts `tlsplice quickstart --dir pki --port 0` in `cwd`, as a user
    /// would, and waits for the listening line and both printed commands.
    fn start(cwd: &Path) -> Quickstart {
        let mut child = Command::new(bin())
            .args(["quickstart", "--dir", "pki", "--port", "0"])
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tlsplice quickstart");
        let stdout = LogBuf::capture(child.stdout.take().unwrap());
        let stderr = LogBuf::capture(child.stderr.take().unwrap());
        let timeout = Duration::from_secs(30);
        let addr = stderr.wait_for(timeout, |l| listening_addrs(l).first().copied());
        let cmds = stdout.wait_for(timeout, |lines| {
            let curl = lines.iter().find(|l| l.trim_start().starts_with("curl "))?;
            let ossl = lines
                .iter()
                .find(|l| l.trim_start().starts_with("openssl s_client"))?;
            Some((curl.trim().to_string(), ossl.trim().to_string()))
        });
        let (Some(addr), Some((curl, openssl))) = (addr, cmds) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "quickstart did not log `listening on` and print `curl ` and `openssl s_client` \
                 lines within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            );
        };
        Quickstart {
            child,
            stdout,
            stderr,
            addr,
            curl,
            openssl,
        }
    }

    fn sigint_and_wait(&mut self) {
        // SAFETY: kill(2) on our own child.
        let r = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(r, 0);
        let started = Instant::now();
        let status = wait_child(&mut self.child, Duration::from_secs(15));
        let status = status.unwrap_or_else(|| {
            panic!(
                "quickstart still running 15s after SIGINT; stderr:\n{}",
                self.stderr.text()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "quickstart exit after SIGINT: {status} (after {:?}); stderr:\n{}",
            started.elapsed(),
            self.stderr.text()
        );
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- quickstart stdout ----\n{}\n---- stderr ----\n{}",
                self.stdout.text(),
                self.stderr.text()
            );
        }
    }
}

fn sh(line: &str, cwd: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("exec {line}")).current_dir(cwd);
    cmd
}

/// Runs the printed curl line exactly; then once more with `-w` appended to
/// read the status code.
fn run_curl(qs: &Quickstart, cwd: &Path) {
    assert!(
        qs.curl.contains(&qs.addr.port().to_string()),
        "the curl line does not use the listening port {}: {}",
        qs.addr.port(),
        qs.curl
    );
    let mut cmd = sh(&qs.curl, cwd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(15));
    assert!(
        status.success(),
        "`{}` failed: {status}\nstdout:\n{out}\nstderr:\n{err}",
        qs.curl
    );
    assert!(
        out.contains("HTTP/1.1") && out.contains("User-Agent: curl"),
        "curl output does not echo the request head:\n{out}"
    );
    let mut cmd = sh(
        &format!("{} -w '\\nhttp_code=%{{http_code}}\\n'", qs.curl),
        cwd,
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(15));
    assert!(status.success(), "{err}");
    assert!(out.contains("http_code=200"), "not HTTP 200:\n{out}");
}

/// Runs the printed openssl line exactly, types a line, expects it echoed.
fn run_openssl(qs: &Quickstart, cwd: &Path) {
    let mut child = sh(&qs.openssl, cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    let stderr = LogBuf::capture(child.stderr.take().unwrap());
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let line = "hello through the quickstart";
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let mut echoed = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                echoed = l.contains(line);
                seen.push(l);
                if echoed {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        echoed,
        "`{}` did not echo our line; stdout:\n{}\nstderr:\n{}",
        qs.openssl,
        seen.join("\n"),
        stderr.text()
    );
}

#[test]
fn quickstart_commands_work_and_sigint_stops_it() {
    require_tool("curl");
    require_tool("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let mut qs = Quickstart::start(tmp.path());
    for f in PKI_FILES {
        let p = tmp.path().join("pki").join(f);
        assert!(p.is_file(), "quickstart did not create {}", p.display());
    }
    run_curl(&qs, tmp.path());
    run_openssl(&qs, tmp.path());
    qs.sigint_and_wait();
}

/// A second quickstart in the same directory keeps the existing PKI and
/// its commands still work.
#[test]
fn quickstart_reuses_existing_pki() {
    require_tool("curl");
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Quickstart::start(tmp.path());
    first.sigint_and_wait();
    let ca_before = fs::read(tmp.path().join("pki/ca.crt")).unwrap();
    let client_before = fs::read(tmp.path().join("pki/client.crt")).unwrap();
    let mut second = Quickstart::start(tmp.path());
    assert_eq!(
        fs::read(tmp.path().join("pki/ca.crt")).unwrap(),
        ca_before,
        "quickstart regenerated an existing ca.crt"
    );
    assert_eq!(
        fs::read(tmp.path().join("pki/client.crt")).unwrap(),
        client_before,
        "quickstart regenerated an existing client.crt"
    );
    run_curl(&second, tmp.path());
    second.sigint_and_wait();
}
