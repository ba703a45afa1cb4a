//! tlsplice: a mutual-TLS terminator.
//!
//! Modules follow one connection's path: [`accept`], [`handshake`],
//! [`admit`], [`connect`] (with [`upstream`] TLS), [`relay`], [`close`];
//! [`runtime`] runs the workers and
//! [`config`] and [`tls`] hold what they are built from.

pub mod accept;
pub mod admin;
pub mod admit;
pub mod close;
pub mod config;
pub mod connect;
pub mod handshake;
pub mod ktls;
#[cfg(test)]
mod noise;
pub mod pool;
pub mod quickstart;
pub mod relay;
pub mod runtime;
pub mod tls;
pub mod trigger;
pub mod upstream;
pub mod watch;
