//! The `tlsplice` command line: parse, load the configuration, start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tlsplice::config::{self, Config, Flags};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mutual-TLS terminator: rustls handshake, kernel TLS when it can, splice to the backend.
#[derive(Parser)]
#[command(name = "tlsplice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Terminate TLS on the configured listeners and relay to the backends.
    Serve(Box<ServeArgs>),
    /// Validate a configuration file and print every problem found.
    Check {
        /// The TOML configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Generate a dev PKI, start a built-in echo backend and serve it with mTLS on 127.0.0.1.
    Quickstart {
        /// Where the dev CA, server and client certificates live (created if absent).
        #[arg(long, default_value = "tlsplice-quickstart")]
        dir: PathBuf,
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The TOML configuration file (instead of the flags below).
    #[arg(short, long, conflicts_with_all = ["listen", "cert", "key", "backend"])]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable), e.g. 0.0.0.0:8443 or [::]:8443.
    #[arg(long)]
    listen: Vec<String>,
    /// Server certificate chain (PEM or DER), or a PKCS#12 bundle (.p12/.pfx) holding the key too.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Server private key (PEM or DER).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA bundle that client certificates must chain to.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Client certificate policy: required, optional or off (default required).
    #[arg(long)]
    client_auth: Option<String>,
    /// Backend host:port (repeatable; round-robin).
    #[arg(long)]
    backend: Vec<String>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// ALPN protocol to offer (repeatable, in preference order).
    #[arg(long)]
    alpn: Vec<String>,
    /// Handshake timeout, e.g. 10s.
    #[arg(long)]
    handshake_timeout: Option<String>,
    /// Idle timeout, e.g. 5m.
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Backend connect timeout, e.g. 5s.
    #[arg(long)]
    connect_timeout: Option<String>,
    /// How long open connections may finish after SIGTERM, e.g. 30s.
    #[arg(long)]
    drain_timeout: Option<String>,
    /// Maximum concurrent connections per worker.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Maximum handshakes in flight per worker (beyond it, new connections
    /// are closed at accept).
    #[arg(long)]
    max_handshakes: Option<usize>,
    /// Kernel TLS offload: auto (when the kernel can), require, or off.
    #[arg(long)]
    ktls: Option<String>,
    /// With --ktls auto: start each connection on the userspace relay and
    /// move it to kernel TLS once it has relayed this many bytes, e.g. 64KiB
    /// (default: at once after the handshake).
    #[arg(long, value_name = "SIZE")]
    ktls_offload_after_bytes: Option<String>,
    /// With --ktls auto: move a connection to kernel TLS once it has lived
    /// this long, e.g. 50ms (default: at once after the handshake).
    #[arg(long, value_name = "DURATION")]
    ktls_offload_after: Option<String>,
    /// Admin listener (GET /metrics, /healthz, /ready; POST /reload), e.g. 127.0.0.1:9901.
    #[arg(long)]
    admin: Option<String>,
    /// PROXY protocol header to backends: v1, v2 (with TLS and client-certificate TLVs) or off.
    #[arg(long)]
    proxy_protocol: Option<String>,
    /// PROXY v2 TLV for the client certificate: sha256[:TYPE] (default
    /// sha256:0xE0), der[:TYPE] (the certificate itself) or off.
    #[arg(long, value_name = "CONTENT[:TYPE]")]
    proxy_protocol_cert_tlv: Option<String>,
    /// Send the client certificate in every HTTP/1.1 request head instead of
    /// a PROXY header: rfc9440 (Client-Cert), xfcc (X-Forwarded-Client-Cert)
    /// or escaped-pem (X-SSL-Client-Cert).
    #[arg(long, value_name = "FORMAT")]
    client_cert_header: Option<String>,
    /// Header name for --client-cert-header (any case), e.g. x-client-cert.
    #[arg(long, value_name = "NAME")]
    client_cert_header_name: Option<String>,
    /// Access-log format: text (key=value) or json (one object per line on stderr).
    #[arg(long)]
    access_log: Option<String>,
    /// CRL file (PEM or DER) for client certificates (repeatable).
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// Allowlist rule (repeatable): alias:NAME=CERT_FILE, sha256:HEX, cn:GLOB,
    /// dns:GLOB, uri:GLOB or spiffe://ID-GLOB.
    #[arg(long)]
    allow: Vec<String>,
    /// DER OCSP response to staple to the server certificate (re-read on SIGHUP).
    #[arg(long)]
    ocsp_staple: Option<PathBuf>,
    /// File whose first line is the password of a PKCS#12 (.p12/.pfx) --cert.
    #[arg(long)]
    cert_password_file: Option<PathBuf>,
    /// Environment variable holding the password of a PKCS#12 --cert.
    #[arg(long)]
    cert_password_env: Option<String>,
    /// Session ticket keys shared by a fleet: one base64 80-byte key per
    /// line, newest first (re-read on SIGHUP and when the file changes).
    #[arg(long)]
    ticket_keys: Option<PathBuf>,
    /// OCSP checking of client certificates: check or off (any --client-ocsp-* flag implies check).
    #[arg(long)]
    client_ocsp: Option<String>,
    /// OCSP responder URL (http://host:port/path); default: the certificate's AIA OCSP URL.
    #[arg(long)]
    client_ocsp_responder: Option<String>,
    /// Longest an OCSP query may take, e.g. 2s (default 2s, at most 30s).
    #[arg(long)]
    client_ocsp_timeout: Option<String>,
    /// When the OCSP status cannot be learned: closed (refuse, default) or open (admit).
    #[arg(long)]
    client_ocsp_fail: Option<String>,
    /// Longest a good OCSP answer is reused, e.g. 5m (default 5m; never past its nextUpdate).
    #[arg(long)]
    client_ocsp_cache_ttl: Option<String>,
    /// Speak TLS to every --backend, trusting this CA bundle for their certificates.
    #[arg(long)]
    backend_tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM, or PKCS#12) presented to backends.
    #[arg(long)]
    backend_tls_cert: Option<PathBuf>,
    /// Private key of --backend-tls-cert.
    #[arg(long)]
    backend_tls_key: Option<PathBuf>,
    /// Server name sent to backends (SNI) and verified in their certificates.
    #[arg(long)]
    backend_tls_name: Option<String>,
    /// Never resume sessions with backends: a full handshake per connection.
    #[arg(long)]
    backend_tls_no_session_reuse: bool,
}

impl ServeArgs {
    fn flags(&self) -> Flags {
        Flags {
            listen: self.listen.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
            client_auth: self.client_auth.clone(),
            backends: self.backend.clone(),
            workers: self.workers,
            alpn: self.alpn.clone(),
            handshake_timeout: self.handshake_timeout.clone(),
            idle_timeout: self.idle_timeout.clone(),
            connect_timeout: self.connect_timeout.clone(),
            drain_timeout: self.drain_timeout.clone(),
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            ktls: self.ktls.clone(),
            ktls_offload_after_bytes: self.ktls_offload_after_bytes.clone(),
            ktls_offload_after: self.ktls_offload_after.clone(),
            admin: self.admin.clone(),
            proxy_protocol: self.proxy_protocol.clone(),
            proxy_protocol_cert_tlv: self.proxy_protocol_cert_tlv.clone(),
            client_cert_header: self.client_cert_header.clone(),
            client_cert_header_name: self.client_cert_header_name.clone(),
            access_log: self.access_log.clone(),
            crl: self.crl.clone(),
            allow: self.allow.clone(),
            ocsp_staple: self.ocsp_staple.clone(),
            cert_password_file: self.cert_password_file.clone(),
            cert_password_env: self.cert_password_env.clone(),
            ticket_keys: self.ticket_keys.clone(),
            client_ocsp: self.client_ocsp.clone(),
            client_ocsp_responder: self.client_ocsp_responder.clone(),
            client_ocsp_timeout: self.client_ocsp_timeout.clone(),
            client_ocsp_fail: self.client_ocsp_fail.clone(),
            client_ocsp_cache_ttl: self.client_ocsp_cache_ttl.clone(),
            backend_tls_ca: self.backend_tls_ca.clone(),
            backend_tls_cert: self.backend_tls_cert.clone(),
            backend_tls_key: self.backend_tls_key.clone(),
            backend_tls_name: self.backend_tls_name.clone(),
            backend_tls_no_session_reuse: self.backend_tls_no_session_reuse,
        }
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check { config } => return check(&config),
        Command::Quickstart { dir, port } => quickstart(&dir, port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsplice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let load = || {
        validated(match &args.config {
            Some(path) => config::load_file(path),
            None => config::from_flags(&args.flags()),
        })
    };
    let config = load()?;
    tlsplice::runtime::run(config, load, |_| {})
}

/// Logs warnings and turns configuration errors into one error listing all.
fn validated(config: Result<Config, config::ConfigErrors>) -> anyhow::Result<Config> {
    match config {
        Ok(config) => {
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            Ok(config)
        }
        Err(errors) => Err(anyhow::anyhow!("invalid configuration:\n{errors}")),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} problem(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn quickstart(dir: &std::path::Path, port: u16) -> anyhow::Result<()> {
    use tlsplice::quickstart;
    let pki = quickstart::ensure_dev_pki(dir)
        .with_context(|| format!("cannot prepare the dev PKI in {}", dir.display()))?;
    let backend = quickstart::start_echo_backend(0).context("cannot start the echo backend")?;
    tracing::info!(%backend, "built-in echo backend");
    let flags = Flags {
        listen: vec![format!("127.0.0.1:{port}")],
        cert: Some(pki.server_cert.clone()),
        key: Some(pki.server_key.clone()),
        client_ca: Some(pki.ca_cert.clone()),
        client_auth: Some("required".into()),
        backends: vec![backend.to_string()],
        workers: Some(1),
        drain_timeout: Some("2s".into()),
        ..Flags::default()
    };
    let load = || validated(config::from_flags(&flags));
    let config = load()?;
    tlsplice::runtime::run(config, load, |addrs| {
        let port = addrs.first().map_or(port, |a| a.port());
        println!("tlsplice is serving mutual TLS on 127.0.0.1:{port} in front of an echo backend.");
        println!("Connect with the client certificate:");
        for cmd in quickstart::connect_commands(&pki, port) {
            println!("{cmd}");
        }
        println!("Press Ctrl-C to stop.");
    })
}
