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
//! # Changing the secret
//! A reload may change `sticky_secret` ([`Keyring::set_secret`]): new cookies are made
//! with the new key, and a cookie made with the key before it is still honoured (and
//! replaced by a new one on the response), until the secret changes again. So a secret
//! rolled out to several instances one by one drops nobody's affinity, whichever instance
//! a client reaches meanwhile. Only one previous key is kept: a cookie two changes old
//! names nothing. The instance's drawn key is kept for its whole life: a reload without a
//! secret goes on with it (it is not drawn again).
//!
//! The tokens of a snapshot's backends are computed once, when the snapshot is built
//! (`Pool::configure`), for both keys; a request's cookie is looked up in a hash map (std's
//! randomly keyed SipHash, so lookup time says nothing about how close a guess is). Nothing
//! of it is per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;

/// The secret tokens are made with.
#[derive(Clone)]
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

/// The keys of one snapshot's tokens: new cookies are made with `current`; one made with
/// `previous` (the key before the last change of secret) is still honoured.
#[derive(Debug, Clone)]
pub struct Keys {
    pub current: Key,
    pub previous: Option<Key>,
}

impl Keys {
    /// One key, nothing before it.
    pub fn only(key: Key) -> Arc<Self> {
        Arc::new(Keys {
            current: key,
            previous: None,
        })
    }
}

/// The instance's sticky keys (one per instance, in its `Router`): the key drawn at start,
/// the configured secret, and the [`Keys`] pools build their tokens with. Changed by a
/// reload only.
#[derive(Debug)]
pub struct Keyring {
    /// Drawn once at start; the current key whenever no secret is configured.
    drawn: Key,
    secret: Option<Box<[u8]>>,
    keys: Arc<Keys>,
}

impl Keyring {
    /// The keyring of an instance started with `secret` (`None`: a key is drawn now).
    pub fn new(secret: Option<&[u8]>) -> Self {
        Self::with_drawn(Key::generate(), secret)
    }

    /// As [`Keyring::new`], with the key used when no secret is configured given.
    pub fn with_drawn(drawn: Key, secret: Option<&[u8]>) -> Self {
        let current = secret.map_or_else(|| drawn.clone(), Key::from_secret);
        Keyring {
            drawn,
            secret: secret.map(Box::from),
            keys: Keys::only(current),
        }
    }

    /// The keys tokens are made and checked with now.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.clone()
    }

    /// A reload's `sticky_secret`: when it differs from the one in use, its key (the drawn
    /// one for `None`) becomes current and the current one previous; the one before is
    /// forgotten. Says whether anything changed (the pools must then be reconfigured for
    /// their snapshots to carry the new keys).
    pub fn set_secret(&mut self, secret: Option<&[u8]>) -> bool {
        if self.secret.as_deref() == secret {
            return false;
        }
        let current = secret.map_or_else(|| self.drawn.clone(), Key::from_secret);
        self.keys = Arc::new(Keys {
            current,
            previous: Some(self.keys.current.clone()),
        });
        self.secret = secret.map(Box::from);
        true
    }
}

/// One backend's cookie value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }
}

/// The sticky cookie of one snapshot: its name and each backend's token, with the current
/// key and with the previous one.
#[derive(Debug)]
pub struct Sticky {
    pub cookie: Box<str>,
    /// By index into the snapshot's backends; made with the current key.
    tokens: Vec<Token>,
    /// Every token a request may carry: the backend's index, and whether the token is
    /// made with the previous key (such a cookie is replaced on the response).
    index: HashMap<Token, (usize, bool)>,
}

/// The backend a request's sticky cookie names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// Index into the snapshot's backends.
    pub backend: usize,
    /// The cookie was made with the previous key: the response carries a new one.
    pub stale: bool,
}

impl Sticky {
    pub fn new(cookie: &str, keys: &Keys, addrs: impl Iterator<Item = SocketAddr>) -> Arc<Self> {
        let addrs: Vec<SocketAddr> = addrs.collect();
        let tokens: Vec<Token> = addrs.iter().map(|&a| keys.current.token(a)).collect();
        let mut index =
            HashMap::with_capacity(addrs.len() * (1 + keys.previous.is_some() as usize));
        if let Some(previous) = &keys.previous {
            index.extend(
                addrs
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| (previous.token(a), (i, true))),
            );
        }
        // After the previous key's: should both keys be the same (a secret changed and
        // changed back), the token is current.
        index.extend(tokens.iter().enumerate().map(|(i, t)| (*t, (i, false))));
        Arc::new(Sticky {
            cookie: cookie.into(),
            tokens,
            index,
        })
    }

    /// The backend (index into the snapshot's) a cookie value names; `None` for a value
    /// no backend of this snapshot has (tampered, from a removed backend, or made with a
    /// key older than the previous one).
    pub fn lookup(&self, value: &[u8]) -> Option<Named> {
        let t: [u8; TOKEN_LEN] = value.try_into().ok()?;
        self.index
            .get(&Token(t))
            .map(|&(backend, stale)| Named { backend, stale })
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
            &Keys::only(Key::from_secret(b"0123456789abcdef")),
            addrs(3).into_iter(),
        );
        let b = Sticky::new(
            "wslb",
            &Keys::only(Key::from_secret(b"0123456789abcdef")),
            addrs(3).into_iter(),
        );
        for i in 0..3 {
            assert_eq!(a.token(i), b.token(i), "two instances agree");
            assert_eq!(
                a.lookup(a.token(i).as_str().as_bytes()),
                Some(Named {
                    backend: i,
                    stale: false
                })
            );
        }
        assert_ne!(a.token(0), a.token(1));
        let other = Sticky::new(
            "wslb",
            &Keys::only(Key::from_secret(b"another secret!!")),
            addrs(3).into_iter(),
        );
        assert_ne!(a.token(0), other.token(0), "another secret, other tokens");
        assert_eq!(other.lookup(a.token(0).as_str().as_bytes()), None);
        let g = Sticky::new("wslb", &Keys::only(Key::generate()), addrs(1).into_iter());
        assert_ne!(g.token(0), a.token(0));
    }

    #[test]
    fn tampered_values_name_nothing() {
        let s = Sticky::new("wslb", &Keys::only(Key::generate()), addrs(2).into_iter());
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
            &Keys::only(Key::from_secret(b"0123456789abcdef")),
            addrs(1).into_iter(),
        );
        let line = s.set_cookie(0, true);
        assert!(line.starts_with(&format!("Set-Cookie: srv={}; Path=/", s.token(0).as_str())));
        assert!(line.ends_with("; Secure\r\n"));
        assert!(!s.set_cookie(0, false).contains("Secure"));
    }

    /// Issue 19: a reload that changed `sticky_secret` was neither applied nor reported.
    /// Now the new secret makes the tokens, the one before is still honoured (marked
    /// stale), and one two changes old is not; a reload without a secret keeps the drawn
    /// key.
    #[test]
    fn a_changed_secret_keeps_the_previous_key_for_one_change() {
        let tokens = |keys: &Keys| Sticky::new("wslb", keys, addrs(2).into_iter());
        let mut ring = Keyring::with_drawn(Key::from_secret(b"drawn at start!!"), None);
        let drawn = tokens(&ring.keys());
        assert!(
            !ring.set_secret(None),
            "no secret before, none now: nothing changes"
        );
        assert_eq!(
            tokens(&ring.keys()).token(1),
            drawn.token(1),
            "the drawn key is kept"
        );

        assert!(ring.set_secret(Some(b"first secret 0123")));
        let first = tokens(&ring.keys());
        assert_ne!(first.token(1), drawn.token(1));
        let old = drawn.token(1).as_str().as_bytes();
        assert_eq!(
            first.lookup(old),
            Some(Named {
                backend: 1,
                stale: true
            })
        );
        assert!(
            !ring.set_secret(Some(b"first secret 0123")),
            "the same secret again"
        );
        assert_eq!(first.lookup(old).map(|n| n.stale), Some(true));

        assert!(ring.set_secret(Some(b"second secret 0123")));
        let second = tokens(&ring.keys());
        assert_eq!(second.lookup(old), None, "two changes old");
        assert_eq!(
            second.lookup(first.token(0).as_str().as_bytes()),
            Some(Named {
                backend: 0,
                stale: true
            })
        );
        // Back to no secret: the key drawn at start again, not a new one.
        assert!(ring.set_secret(None));
        assert_eq!(tokens(&ring.keys()).token(1), drawn.token(1));
    }
}
