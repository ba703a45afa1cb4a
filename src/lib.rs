//! tlsplice: a mutual-TLS terminator.
//!
//! Modules follow one connection's path: [`accept`], [`handshake`],
//! [`connect`], [`relay`], [`close`]; [`runtime`] runs the workers and
//! [`config`] and [`tls`] hold what they are built from.

pub mod config;
pub mod tls;
pub mod accept;
pub mod close;
pub mod connect;
pub mod handshake;
pub mod ktls;
pub mod relay;
pub mod runtime;
pub mod trigger;
pub mod quickstart;
