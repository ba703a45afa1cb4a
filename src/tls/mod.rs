//! TLS material and policy: certificate loading, ClientHello inspection,
//! and the rustls server configuration built from a listener's settings.

pub mod certs;
pub mod client_hello;
