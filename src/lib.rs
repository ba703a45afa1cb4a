//! tlsplice: a mutual-TLS terminator.
//!
//! Modules follow one connection's path: [`accept`], [`handshake`],
//! [`connect`], [`relay`], [`close`]; [`runtime`] runs the workers and
//! [`config`] and [`tls`] hold what they are built from.

pub mod config;
pub mod quickstart;
pub mod tls;
