//! SNI routes: each server name gets its own certificate, client CA and
//! backend pool; an unknown name is refused with `unrecognized_name` (seen
//! by rustls and by `openssl s_client`) unless the listener has a default
//! route, which then serves it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// The id of the backend behind `name`, and the certificate presented.
fn backend_id(
    server: &Server,
    opts: &ClientOpts,
    name: &str,
) -> std::io::Result<(String, rustls::pki_types::CertificateDer<'static>)> {
    greeting(server.addr(), opts.build(), name).map(|(id, cert, _)| (id, cert))
}

fn spawn_config(dir: &Path, text: &str) -> Server {
    let file = write_file(dir, "routes.toml", text);
    Server::spawn_args(
        &["serve".into(), "-c".into(), file.display().to_string()],
        1,
    )
}

/// Two routes, no default: `api` trusts the test CA and balances over two
/// backends; `portal` (a name and a wildcard) trusts the other CA. Returns
/// the config and the two routes' server certificates.
fn two_routes(pki: &Pki, api: &[&Backend], portal: &Backend) -> (String, Identity, Identity) {
    let api_cert = pki.server_for("api", &["api.example.com"]);
    let portal_cert = pki.server_for("portal", &["portal.example.com", "*.portal.example.com"]);
    let list = |b: &[&Backend]| {
        b.iter()
            .map(|b| format!("\"{}\"", b.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        r#"workers = 2

[[pool]]
name = "api-pool"
backends = [{api}]

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

[[listener.route]]
name = "api"
server_names = ["api.example.com"]
cert = "{api_crt}"
key = "{api_key}"
client_ca = "{ca}"
pool = "api-pool"

[[listener.route]]
name = "portal"
server_names = ["portal.example.com", "*.portal.example.com"]
cert = "{portal_crt}"
key = "{portal_key}"
client_ca = "{other_ca}"
backends = ["{portal}"]
"#,
        api = list(api),
        api_crt = api_cert.cert_path.display(),
        api_key = api_cert.key_path.display(),
        portal_crt = portal_cert.cert_path.display(),
        portal_key = portal_cert.key_path.display(),
        ca = pki.ca_path.display(),
        other_ca = pki.other_ca_path.display(),
        portal = portal.addr,
    );
    (text, api_cert, portal_cert)
}

#[test]
fn each_name_gets_its_certificate_client_ca_and_pool() {
    let pki = Pki::new();
    let (a0, a1, p0) = (
        Backend::with_id("api-0"),
        Backend::with_id("api-1"),
        Backend::with_id("portal-0"),
    );
    let (text, api_cert, portal_cert) = two_routes(&pki, &[&a0, &a1], &p0);
    let server = spawn_config(pki.path(), &text);

    let api_client = ClientOpts::new(&pki);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (id, cert) = backend_id(&server, &api_client, "api.example.com").unwrap();
        assert_eq!(cert, api_cert.cert_der, "the api route's own certificate");
        seen.push(id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["api-0", "api-1"], "the api pool's two backends");

    // portal: trusts only the other CA, answers for the wildcard too.
    let portal_client = ClientOpts::new(&pki).identity(Some(&pki.client_other_ca));
    for name in ["portal.example.com", "eu.portal.example.com"] {
        let (id, cert) = backend_id(&server, &portal_client, name).unwrap();
        assert_eq!(id, "portal-0", "{name}");
        assert_eq!(cert, portal_cert.cert_der, "{name}");
    }

    // Each route checks clients against its own CA only.
    let wrong = backend_id(&server, &portal_client, "api.example.com");
    assert!(
        wrong.is_err(),
        "api route admitted a client of the other CA"
    );
    let wrong = backend_id(&server, &api_client, "portal.example.com");
    assert!(
        wrong.is_err(),
        "portal route admitted a client of the test CA"
    );

    let log = server
        .log
        .wait_line(
            WAIT,
            &["access", "route=portal", "sni=eu.portal.example.com"],
        )
        .expect("access line naming the route");
    assert!(
        log.contains("backend=") && log.contains("reason=done"),
        "{log}"
    );
    assert!(server
        .log
        .wait_line(WAIT, &["access", "route=api", "reason=done"])
        .is_some());
}

#[test]
fn unknown_or_missing_server_name_is_refused_with_unrecognized_name() {
    let pki = Pki::new();
    let (a0, p0) = (Backend::with_id("api-0"), Backend::with_id("portal-0"));
    let (text, _, _) = two_routes(&pki, &[&a0], &p0);
    let server = spawn_config(pki.path(), &text);
    let client = ClientOpts::new(&pki);

    // rustls: an unknown name, and no SNI at all (an IP address).
    for name in ["www.example.com", "127.0.0.1"] {
        let err = tls_connect_named(server.addr(), client.build(), name, IO_TIMEOUT)
            .err()
            .unwrap_or_else(|| panic!("{name}: handshake succeeded"));
        assert_eq!(
            rustls_error(&err),
            Some(&rustls::Error::AlertReceived(
                rustls::AlertDescription::UnrecognisedName
            )),
            "{name}: {err}"
        );
    }

    // OpenSSL's client sees the same alert (number 112).
    require_tool("openssl");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &server.addr().to_string()])
        .args(["-servername", "nope.example.com"])
        .args(["-CAfile", pki.ca_path.to_str().unwrap()])
        .args(["-cert", pki.client.cert_path.to_str().unwrap()])
        .args(["-key", pki.client.key_path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, out, err) = run_bounded(cmd, WAIT);
    assert!(!status.success(), "s_client connected:\n{out}\n{err}");
    assert!(
        err.contains("unrecognized name") && err.contains("alert number 112"),
        "s_client did not report unrecognized_name:\n{err}"
    );

    // Each refusal is logged with its reason, and nothing reached a backend.
    let refused = server.log.wait_for(WAIT, |lines| {
        let n = lines
            .iter()
            .filter(|l| l.contains("reason=no_route: no route for server name"))
            .count();
        (n >= 2).then_some(n)
    });
    assert!(refused.is_some(), "{}", server.log.text());
    assert!(server
        .log
        .wait_line(WAIT, &["reason=no_route: client sent no server name"])
        .is_some());
    assert_eq!(a0.accepted() + p0.accepted(), 0);
}

#[test]
fn default_route_serves_names_no_route_has() {
    let pki = Pki::new();
    let (a0, d0) = (Backend::with_id("api-0"), Backend::with_id("default-0"));
    let api_cert = pki.server_for("api", &["api.example.com"]);
    let text = format!(
        r#"workers = 1

[[listener]]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
backends = ["{d0}"]

[[listener.route]]
name = "api"
server_names = ["API.Example.com"]
cert = "{api_crt}"
key = "{api_key}"
client_ca = "{ca}"
backends = ["{a0}"]
"#,
        cert = pki.server.cert_path.display(),
        key = pki.server.key_path.display(),
        ca = pki.ca_path.display(),
        d0 = d0.addr,
        api_crt = api_cert.cert_path.display(),
        api_key = api_cert.key_path.display(),
        a0 = a0.addr,
    );
    let server = spawn_config(pki.path(), &text);
    let client = ClientOpts::new(&pki);

    let (id, cert) = backend_id(&server, &client, "api.example.com").unwrap();
    assert_eq!((id.as_str(), &cert), ("api-0", &api_cert.cert_der));
    // "localhost" matches no route: the listener's own certificate and backend.
    let (id, cert) = backend_id(&server, &client, "localhost").unwrap();
    assert_eq!((id.as_str(), &cert), ("default-0", &pki.server.cert_der));
    let (id, _) = backend_id(&server, &client, "127.0.0.1").unwrap();
    assert_eq!(id, "default-0", "no SNI goes to the default route");
    assert!(server
        .log
        .wait_line(WAIT, &["access", "route=default", "sni=localhost"])
        .is_some());
}

#[test]
fn reload_swaps_routes_and_metrics_count_by_route() {
    let pki = Pki::new();
    let (a0, p0) = (Backend::with_id("api-0"), Backend::with_id("portal-0"));
    let (text, _, _) = two_routes(&pki, &[&a0], &p0);
    // Only the api route at first (the portal route is cut off the text).
    let api_only = text[..text.find("[[listener.route]]\nname = \"portal\"").unwrap()].to_string();
    let with_admin = |t: &str| t.replace("workers = 2\n", "workers = 2\nadmin = \"127.0.0.1:0\"\n");
    let file = write_file(pki.path(), "routes.toml", with_admin(&api_only));
    let server = Server::spawn_args(
        &["serve".into(), "-c".into(), file.display().to_string()],
        1,
    );
    let admin = admin_addr(&server);
    let portal_client = ClientOpts::new(&pki).identity(Some(&pki.client_other_ca));

    let (id, _) = backend_id(&server, &ClientOpts::new(&pki), "api.example.com").unwrap();
    assert_eq!(id, "api-0");
    let err = backend_id(&server, &portal_client, "portal.example.com").unwrap_err();
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::UnrecognisedName
        ))
    );

    // Add the portal route and reload: new connections get it.
    write_file(pki.path(), "routes.toml", with_admin(&text));
    let (status, body) = http(admin, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (id, _) = backend_id(&server, &portal_client, "portal.example.com").unwrap();
        assert_eq!(id, "portal-0");
    }

    let (_, metrics) = http(admin, "GET", "/metrics");
    let lines = parse_with_prometheus_client(&metrics);
    let route = |r: &str| {
        sample(
            &lines,
            &format!("tlsplice_route_connections_total{{listener=\"edge\",route=\"{r}\"}}"),
        )
    };
    assert_eq!(route("api"), Some(1.0), "{}", lines.join("\n"));
    assert_eq!(route("portal"), Some(2.0), "{}", lines.join("\n"));
    assert_eq!(
        sample(
            &lines,
            "tlsplice_connections_closed_total{reason=\"no_route\"}"
        ),
        Some(1.0)
    );
}
