//! STUB
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello { pub server_name: Option<String>, pub alpn: Vec<Vec<u8>>, pub supported_versions: Vec<u16>, pub record_version: u16 }
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientHelloError { #[error("x")] Malformed(&'static str) }
pub const MAX_CLIENT_HELLO_BYTES: usize = 65536 + 1024;
pub fn parse(buf: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> { if buf.len() < 5 { Ok(None) } else if buf[0] != 22 { Err(ClientHelloError::Malformed("x")) } else { let l = u16::from_be_bytes([buf[3], buf[4]]) as usize; if buf.len() < 5 + l { Ok(None) } else { Ok(Some(ClientHello::default())) } } }
