//! TLS material and policy: certificate loading, ClientHello inspection,
//! the rustls server configuration built from a listener's settings, and
//! the outgoing record buffer and the sans-IO layer over rustls' unbuffered
//! connections (server toward clients, client toward backends).

pub mod certs;
pub mod client_hello;
pub mod records;
pub mod route;
pub mod server_config;
pub mod tickets;
pub mod traffic;
pub mod unbuffered;
pub mod verify;
