//! Client trust end to end: CRLs (and un-revoking by reload) and allowlists,
//! with the alert each refusal sends and the identity in the access log.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use rustls::AlertDescription;

#[test]
fn revoked_client_refused_then_admitted_after_reload() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let crl = pki.path().join("clients.crl");
    fs::write(&crl, pki.crl(&[&pki.client])).unwrap();
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--crl", crl.to_str().unwrap());
    let server = args.spawn();
    let client = ClientOpts::new(&pki).identity(Some(&pki.client));

    assert_eq!(
        admission(&server, &client),
        Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked
        ))
    );
    assert_eq!(
        backend.accepted(),
        0,
        "a revoked client reached the backend"
    );

    fs::write(&crl, pki.crl(&[])).unwrap();
    server.signal(libc::SIGHUP);
    server
        .log
        .wait_line(Duration::from_secs(10), &["reloaded"])
        .expect("reload logged");
    assert_eq!(admission(&server, &client), Ok(()));
}

#[test]
fn allowlist_alias_admitted_with_identity_unlisted_refused() {
    let pki = Pki::new();
    let backend = Backend::echo();
    let alias_rule = format!("alias:billing={}", pki.client.cert_path.display());

    // Listed by alias: admitted, and the access log names it.
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--allow", &alias_rule);
    let server = args.spawn();
    let client = ClientOpts::new(&pki).identity(Some(&pki.client));
    assert_eq!(admission(&server, &client), Ok(()));
    let line = server
        .log
        .wait_line(Duration::from_secs(10), &["access", "identity=billing"])
        .unwrap_or_else(|| panic!("identity in access log:\n{}", server.log.text()));
    assert!(line.contains("reason=done"), "{line}");
    drop(server);

    // Verified by the CA but matching no rule: access_denied.
    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--allow", "cn:someone-else")
        .flag("--allow", "sha256:00");
    let mut args_ok = ServeArgs::new(&pki, backend.addr);
    args_ok.flag("--allow", "cn:test-*");
    let accepted_before = backend.accepted();
    let bad = ServeArgs::new(&pki, backend.addr)
        .flag("--allow", "cn:someone-else")
        .spawn();
    assert_eq!(
        admission(&bad, &client),
        Err(rustls::Error::AlertReceived(AlertDescription::AccessDenied))
    );
    assert_eq!(
        backend.accepted(),
        accepted_before,
        "an unlisted client reached the backend"
    );
    drop(bad);

    // A glob on the subject CN admits it, named by the rule.
    let glob = ServeArgs::new(&pki, backend.addr)
        .flag("--allow", "cn:test-*")
        .spawn();
    assert_eq!(admission(&glob, &client), Ok(()));
    glob.log
        .wait_line(
            Duration::from_secs(10),
            &["access", "identity=cn:test-client"],
        )
        .unwrap_or_else(|| panic!("glob identity:\n{}", glob.log.text()));

    // A malformed rule is a flag error naming it.
    let (status, _, err) = run_tlsplice(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            pki.server.cert_path.to_str().unwrap(),
            "--key",
            pki.server.key_path.to_str().unwrap(),
            "--client-ca",
            pki.ca_path.to_str().unwrap(),
            "--backend",
            &backend.addr.to_string(),
            "--allow",
            "sha256:00",
        ],
        None,
    );
    assert!(!status.success());
    assert!(err.contains("--allow"), "{err}");
}

/// A PKCS#12 bundle made by `openssl pkcs12 -export` (AES, the OpenSSL 3
/// default) serves as the server identity, its password read from a file;
/// a wrong password is a configuration error naming the file.
#[test]
fn pkcs12_server_identity() {
    require_tool("openssl");
    let pki = Pki::new();
    let backend = Backend::echo();
    let p12 = pki.path().join("server.p12");
    let password = pki.path().join("p12.pass");
    std::fs::write(&password, "s3cret\n").unwrap();
    export_pkcs12(&pki.server, &p12, "s3cret");

    let mut args = ServeArgs::new(&pki, backend.addr);
    args.remove("--key")
        .set("--cert", p12.to_str().unwrap())
        .flag("--cert-password-file", password.to_str().unwrap());
    let server = args.spawn();
    let client = ClientOpts::new(&pki).identity(Some(&pki.client));
    assert_eq!(admission(&server, &client), Ok(()));

    std::fs::write(&password, "wrong\n").unwrap();
    let (status, _, err) = run_tlsplice(
        &args.args.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    );
    assert!(!status.success());
    assert!(err.contains("server.p12"), "{err}");
}

/// A client's PKCS#12 bundle, uploaded under an alias in a
/// `[[listener.clients]]` table with its password in a file (or the
/// environment): that client is admitted and known by the alias; a client
/// of the same CA that is not listed gets access_denied.
#[test]
fn pkcs12_client_alias_from_clients_table() {
    require_tool("openssl");
    let pki = Pki::new();
    let backend = Backend::echo();
    let billing = pki.path().join("billing.p12");
    export_pkcs12(&pki.client, &billing, "b1lling");
    let password = pki.path().join("billing.pass");
    std::fs::write(&password, "b1lling\n").unwrap();
    let reports = pki.issue_client("reports", None);
    let reports_p12 = pki.path().join("reports.p12");
    export_pkcs12(&reports, &reports_p12, "r3ports");
    let config = pki.path().join("tlsplice.toml");
    let write_config = |reports_table: &str| {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             backends = [\"{}\"]\n\n[[listener.clients]]\nalias = \"billing\"\ncert = \"billing.p12\"\n\
             password_file = \"billing.pass\"\n{reports_table}",
            pki.server.cert_path, pki.server.key_path, pki.ca_path, backend.addr
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config("");
    let args = [
        "serve".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let server = Server::spawn_args(&args, 1);

    let client = ClientOpts::new(&pki).identity(Some(&pki.client));
    assert_eq!(admission(&server, &client), Ok(()));
    server
        .log
        .wait_line(Duration::from_secs(10), &["access", "identity=billing"])
        .unwrap_or_else(|| panic!("alias identity:\n{}", server.log.text()));
    let stranger = ClientOpts::new(&pki).identity(Some(&reports));
    assert_eq!(
        admission(&server, &stranger),
        Err(rustls::Error::AlertReceived(AlertDescription::AccessDenied))
    );
    drop(server);

    // The second alias's password comes from the environment; unset, the
    // error names the field and the variable.
    write_config(
        "\n[[listener.clients]]\nalias = \"reports\"\ncert = \"reports.p12\"\npassword_env = \"TLSPLICE_TEST_REPORTS_PASSWORD\"\n",
    );
    let (status, _, err) = run_tlsplice(&["check", "-c", config.to_str().unwrap()], None);
    assert!(!status.success());
    assert!(
        err.contains("listener[0].clients[1].password_env: environment variable TLSPLICE_TEST_REPORTS_PASSWORD is not set"),
        "{err}"
    );
    let mut cmd = std::process::Command::new(bin());
    cmd.args(&args)
        .env("TLSPLICE_TEST_REPORTS_PASSWORD", "r3ports")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let log = LogBuf::capture(child.stderr.take().unwrap());
    let addr = log.wait_for(WAIT, |lines| listening_addrs(lines).first().copied());
    let admitted = addr.map(|addr| {
        let mut tls = tls_connect(addr, ClientOpts::new(&pki).identity(Some(&reports)).build())
            .expect("handshake");
        echo_round_trip(&mut tls, b"hello\n");
        drop(tls);
        // The access line is written when the connection closes.
        log.wait_line(Duration::from_secs(10), &["access", "identity=reports"])
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        admitted.flatten().is_some(),
        "reports not admitted under its alias:\n{}",
        log.text()
    );
}

/// An OCSP response produced by `openssl ocsp` is stapled, and `openssl
/// s_client -status` shows it as a good response for the server certificate.
#[test]
fn ocsp_staple_from_file() {
    require_tool("openssl");
    let pki = Pki::new();
    let backend = Backend::echo();
    let dir = pki.path();
    let serial = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&pki.server.cert_path)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_string();
    std::fs::write(
        dir.join("index.txt"),
        format!("V\t391231235959Z\t\t{serial}\tunknown\t/CN=localhost\n"),
    )
    .unwrap();
    let resp = dir.join("server.ocsp");
    let status = std::process::Command::new("openssl")
        .args(["ocsp", "-ndays", "1", "-index"])
        .arg(dir.join("index.txt"))
        .arg("-rsigner")
        .arg(&pki.ca_path)
        .arg("-rkey")
        .arg(dir.join("ca.key"))
        .arg("-CA")
        .arg(&pki.ca_path)
        .arg("-issuer")
        .arg(&pki.ca_path)
        .arg("-cert")
        .arg(&pki.server.cert_path)
        .arg("-respout")
        .arg(&resp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl ocsp");

    let mut args = ServeArgs::new(&pki, backend.addr);
    args.flag("--ocsp-staple", resp.to_str().unwrap());
    let server = args.spawn();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-status", "-connect"])
        .arg(server.addr().to_string())
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&pki.ca_path)
        .arg("-cert")
        .arg(&pki.client.cert_path)
        .arg("-key")
        .arg(&pki.client.key_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (_, out, err) = run_bounded(cmd, Duration::from_secs(20));
    let all = format!("{out}\n{err}");
    assert!(all.contains("OCSP Response Status: successful"), "{all}");
    assert!(all.contains("Cert Status: good"), "{all}");

    // Not DER: refused at load, naming the file.
    std::fs::write(&resp, "-----BEGIN NOT OCSP-----\n").unwrap();
    let (status, _, err) = run_tlsplice(
        &args.args.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    );
    assert!(!status.success());
    assert!(err.contains("server.ocsp"), "{err}");
}
