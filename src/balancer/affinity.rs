//! Sticky-cookie affinity (`sticky = "cookie"`): the 101 carries a `Set-Cookie` naming the
//! backend, and a later request with that cookie goes back to it while it is up.
//!
//! The cookie's value is a token, not an address: the first 16 bytes of
//! HMAC-SHA256(secret, "wslb-sticky\0" + the backend's address), base64url (22 characters).
//! A client cannot make one for a backend of its choice without the secret, and the token
//! tells nothing about the backends' addresses. Two instances with the same secret
//! (`sticky_secret`) and the same backend give it the same token, so a client keeps its
//! backend when a balancer in front sends it to another wslb; without a configured secret
//! each instance draws its own at start (tokens then hold for that process, across
//! reloads, and not after a restart).
//!
//! The tokens of a snapshot's backends are computed once, when the snapshot is built
//! (`Pool::configure`); a request's cookie is looked up in a hash map (std's randomly keyed
//! SipHash, so lookup time says nothing about how close a guess is).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;

/// The secret tokens are made with.
pub struct Key(aws_lc_rs::hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from a configured secret (any bytes; `config` asks for at least 16).
    pub fn from_secret(secret: &[u8]) -> Self {
        Key(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            secret,
        ))
    }

    /// A key drawn from the system RNG: tokens hold for this process only.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        // The system RNG does not fail on Linux once the kernel's pool is ready; should it,
        // a fixed key would make tokens forgeable, so refuse to go on.
        aws_lc_rs::rand::fill(&mut secret).expect("the system RNG failed");
        Self::from_secret(&secret)
    }

    /// The token (cookie value) of the backend at `addr`.
    pub fn token(&self, addr: SocketAddr) -> Token {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(b"wslb-sticky\0");
        ctx.update(addr.to_string().as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; TOKEN_LEN];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(&tag.as_ref()[..16], &mut out)
            .expect("16 bytes are 22 base64 characters");
        debug_assert_eq!(n, TOKEN_LEN);
        Token(out)
    }
}

const TOKEN_LEN: usize = 22;

/// One backend's cookie value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }
}

/// The sticky cookie of one snapshot: its name and each backend's token.
#[derive(Debug)]
pub struct Sticky {
    pub cookie: Box<str>,
    /// By index into the snapshot's backends.
    tokens: Vec<Token>,
    index: HashMap<Token, usize>,
}

impl Sticky {
    pub fn new(cookie: &str, key: &Key, addrs: impl Iterator<Item = SocketAddr>) -> Arc<Self> {
        let tokens: Vec<Token> = addrs.map(|a| key.token(a)).collect();
        let index = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        Arc::new(Sticky {
            cookie: cookie.into(),
            tokens,
            index,
        })
    }

    /// The backend (index into the snapshot's) a cookie value names; `None` for a value
    /// no backend of this snapshot has (tampered, or from a removed backend).
    pub fn lookup(&self, value: &[u8]) -> Option<usize> {
        let t: [u8; TOKEN_LEN] = value.try_into().ok()?;
        self.index.get(&Token(t)).copied()
    }

    pub fn token(&self, i: usize) -> &Token {
        &self.tokens[i]
    }

    /// The `Set-Cookie` header line (with its CRLF) for backend `i`. `secure` over TLS.
    /// A session cookie (no expiry): it lives as long as the browser session, like the
    /// connection's session on the backend usually does. `HttpOnly`: page scripts have no
    /// use for it. `SameSite=Lax`: sent with same-site requests and top-level navigations.
    pub fn set_cookie(&self, i: usize, secure: bool) -> String {
        format!(
            "Set-Cookie: {}={}; Path=/; HttpOnly; SameSite=Lax{}\r\n",
            self.cookie,
            self.tokens[i].as_str(),
            if secure { "; Secure" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 9000 + i)))
            .collect()
    }

    #[test]
    fn tokens_name_backends_and_are_the_same_for_the_same_secret() {
        let a = Sticky::new(
            "wslb",
            &Key::from_secret(b"0123456789abcdef"),
            addrs(3).into_iter(),
        );
        let b = Sticky::new(
            "wslb",
            &Key::from_secret(b"0123456789abcdef"),
            addrs(3).into_iter(),
        );
        for i in 0..3 {
            assert_eq!(a.token(i), b.token(i), "two instances agree");
            assert_eq!(a.lookup(a.token(i).as_str().as_bytes()), Some(i));
        }
        assert_ne!(a.token(0), a.token(1));
        let other = Sticky::new(
            "wslb",
            &Key::from_secret(b"another secret!!"),
            addrs(3).into_iter(),
        );
        assert_ne!(a.token(0), other.token(0), "another secret, other tokens");
        assert_eq!(other.lookup(a.token(0).as_str().as_bytes()), None);
        let g = Sticky::new("wslb", &Key::generate(), addrs(1).into_iter());
        assert_ne!(g.token(0), a.token(0));
    }

    #[test]
    fn tampered_values_name_nothing() {
        let s = Sticky::new("wslb", &Key::generate(), addrs(2).into_iter());
        let good = s.token(1).as_str().to_string();
        let mut flipped = good.clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        for bad in [
            &flipped[..],
            &good.as_bytes()[..21],
            b"",
            b"10.0.0.1:9001",
            format!("{good}x").as_bytes(),
        ] {
            assert_eq!(s.lookup(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn set_cookie_line() {
        let s = Sticky::new(
            "srv",
            &Key::from_secret(b"0123456789abcdef"),
            addrs(1).into_iter(),
        );
        let line = s.set_cookie(0, true);
        assert!(line.starts_with(&format!("Set-Cookie: srv={}; Path=/", s.token(0).as_str())));
        assert!(line.ends_with("; Secure\r\n"));
        assert!(!s.set_cookie(0, false).contains("Secure"));
    }
}
