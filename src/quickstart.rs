//! STUB
pub struct DevPki { pub dir: std::path::PathBuf, pub ca_cert: std::path::PathBuf, pub ca_key: std::path::PathBuf, pub server_cert: std::path::PathBuf, pub server_key: std::path::PathBuf, pub client_cert: std::path::PathBuf, pub client_key: std::path::PathBuf }
pub fn ensure_dev_pki(_d: &std::path::Path) -> anyhow::Result<DevPki> { todo!() }
pub fn start_echo_backend(_p: u16) -> std::io::Result<std::net::SocketAddr> { todo!() }
pub fn connect_commands(_p: &DevPki, _port: u16) -> Vec<String> { vec![] }
