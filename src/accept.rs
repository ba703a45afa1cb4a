//! Listening sockets: one SO_REUSEPORT socket per worker and address, so the
//! kernel spreads new connections across workers without a shared accept lock.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// A listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the kernel said.
    pub source: io::Error,
}

/// Binds `count` sockets to `addr` with SO_REUSEPORT.
///
/// When `addr` has port 0, the first socket picks an ephemeral port and the
/// others join it, so every worker serves the same port.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> Result<Vec<TcpListener>, BindError> {
    let mut sockets = Vec::with_capacity(count);
    let mut bind_to = addr;
    for _ in 0..count.max(1) {
        let listener = bind_one(bind_to, backlog).map_err(|source| BindError { addr, source })?;
        if bind_to.port() == 0 {
            bind_to = listener
                .local_addr()
                .map_err(|source| BindError { addr, source })?;
        }
        sockets.push(listener);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // One socket per family keeps "0.0.0.0" and "[::]" listeners independent.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_port_is_shared_by_all_sockets() {
        let socks = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let ports: Vec<u16> = socks
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0));
    }

    #[test]
    fn bind_error_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_reuseport(addr, 1, 16).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
