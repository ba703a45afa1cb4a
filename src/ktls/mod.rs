//! Kernel TLS: handing a finished rustls session to the kernel.

pub mod crypto_info;
pub mod handover;
pub mod policy;
pub mod probe;
pub mod socket;
