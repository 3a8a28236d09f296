//! Loopback addresses and ports that no other test uses.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static NEXT: AtomicU32 = AtomicU32::new(0);
static BASE: OnceLock<u8> = OnceLock::new();

/// A fresh address in 127.0.0.0/8, distinct per call within a process and,
/// through a random second octet, very likely across concurrent processes.
/// The 127.0.0.x block is left to the sandbox.
pub fn fresh_ip() -> Ipv4Addr {
    let base = *BASE.get_or_init(|| 20 + (kh::token::random_bytes::<1>()[0] % 200));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, base, (n / 250) as u8 + 1, (n % 250) as u8 + 1)
}

/// A port free on `ip` right now. The address is private to the caller, so
/// the race between releasing and reusing it is harmless.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind {ip}:0: {e}"))
}

/// Two distinct ports free on `ip` right now. Both are held while the second
/// is chosen: two calls of [`free_port`] may hand out the same port, since
/// the first is released before the second is asked for.
pub fn free_port_pair(ip: Ipv4Addr) -> (u16, u16) {
    let bind = || TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("cannot bind {ip}:0: {e}"));
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap();
    (port(&a), port(&b))
}

pub fn fresh_addr() -> SocketAddr {
    let ip = fresh_ip();
    SocketAddr::from((ip, free_port(ip)))
}
