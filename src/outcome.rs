//! How a connection or a request ends short of the relay. [`Refusal`]: what wslb answers
//! when it refuses one itself, one type that knows its response (status line, headers,
//! body, `Connection: close`), its `wslb_connections_rejected_total` reason and its
//! access-log outcome; the listener's admission, the dispatch steps and the dial all refuse
//! through it, so a status, its bytes and its counter cannot disagree. [`Ended`]: every
//! way a connection can end before its relay starts, typed by the side at fault, with the
//! refusal it is answered with, if any.

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::dial::{BackendError, NoBackend};
use crate::handshake::Reject;
use crate::metrics::Rejected;
use crate::tls;

/// Why a connection ended before its relay started (or why one plain exchange failed).
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// wslb refused the request: the client is answered with it.
    #[error("{0}; answered {status}", status = .0.status())]
    Refused(Refusal),
    /// A backend failed: the client is answered with `answer` (502, or 504 for a plain
    /// request's backend that sent no head in time).
    #[error("backend {addr}: {error}; answered {status}", status = .answer.status())]
    Backend {
        addr: SocketAddr,
        error: BackendError,
        answer: Refusal,
    },
    /// The backend answered the upgrade with something other than 101, relayed as it was.
    #[error("backend {addr} refused the upgrade with status {status}; relayed")]
    BackendRefused { addr: SocketAddr, status: u16 },
    #[error("client did not finish its request in time")]
    ClientTimeout,
    #[error("client closed before finishing its request")]
    ClientClosed,
    #[error("client I/O error: {0}")]
    ClientIo(std::io::Error),
    #[error("client's TLS handshake failed ({})", .0.label())]
    Tls(tls::Failure),
}

impl From<Refusal> for Ended {
    fn from(r: Refusal) -> Self {
        Ended::Refused(r)
    }
}

impl From<Reject> for Ended {
    fn from(r: Reject) -> Self {
        Ended::Refused(Refusal::BadRequest(r))
    }
}

impl From<NoBackend> for Ended {
    fn from(e: NoBackend) -> Self {
        match e {
            NoBackend::AllDown => Ended::Refused(Refusal::AllDown),
            NoBackend::Exhausted { .. } => Ended::Refused(Refusal::BadGateway),
            NoBackend::Failed { addr, error } => {
                Ended::failed_by(addr, BackendError::Dial(error), Refusal::BadGateway)
            }
        }
    }
}

impl Ended {
    /// Backend `addr` failed the exchange with `error`; the client is answered `answer`.
    pub fn failed_by(addr: SocketAddr, error: BackendError, answer: Refusal) -> Self {
        Ended::Backend {
            addr,
            error,
            answer,
        }
    }

    /// What the client is answered with, if anything.
    pub fn answer(&self) -> Option<Refusal> {
        match self {
            Ended::Refused(r) | Ended::Backend { answer: r, .. } => Some(*r),
            _ => None,
        }
    }

    /// The `wslb_connections_rejected_total` reason, which is also the access-log outcome.
    pub fn reason(&self) -> Rejected {
        match self {
            Ended::Refused(r) | Ended::Backend { answer: r, .. } => r.reason(),
            Ended::BackendRefused { .. } => Rejected::BackendRefused,
            Ended::ClientTimeout | Ended::Tls(tls::Failure::Timeout) => Rejected::ClientTimeout,
            Ended::Tls(_) => Rejected::TlsHandshake,
            Ended::ClientClosed | Ended::ClientIo(_) => Rejected::ClientGone,
        }
    }

    /// The backend at fault or answering, where one is.
    pub fn backend(&self) -> Option<SocketAddr> {
        match self {
            Ended::Backend { addr, .. } | Ended::BackendRefused { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// Worth a warning: the backends failed, not the client.
    pub fn backend_failed(&self) -> bool {
        matches!(
            self,
            Ended::Backend { .. }
                | Ended::Refused(Refusal::AllDown | Refusal::BadGateway | Refusal::GatewayTimeout)
        )
    }

    /// The HTTP status the client got: wslb's answer, or the backend's relayed refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Ended::BackendRefused { status, .. } => Some(*status),
            e => e.answer().map(Refusal::status),
        }
    }
}

/// A refusal, answered by wslb with its status and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client's request is bad: 400, 405, 413, 414, 426 or 431 ([`Reject::status`]).
    #[error("{0}")]
    BadRequest(Reject),
    /// No route matches the request's host and path: 404.
    #[error("no route for this host and path")]
    NoRoute,
    /// Health checks have every backend of the route down: 503, without trying one.
    #[error("every backend is down (health checks)")]
    AllDown,
    /// No backend could be reached, or one failed the exchange: 502.
    #[error("no backend could be reached")]
    BadGateway,
    /// A plain request's backend sent no response head in time: 504.
    #[error("the backend did not answer in time")]
    GatewayTimeout,
    /// The instance is at `limits.max_connections`: 503 right after accept.
    #[error("connection limit reached")]
    OverLimit,
    /// Over `limits.max_connections_per_ip`: 429 right after accept.
    #[error("too many connections from this address")]
    PerIpConnections,
    /// Over `limits.handshake_rate_per_ip`: 429 right after accept, with the seconds until
    /// the client's bucket has a token again.
    #[error("too many new connections from this address")]
    PerIpRate { retry_after: u32 },
}

impl From<Reject> for Refusal {
    fn from(r: Reject) -> Self {
        Refusal::BadRequest(r)
    }
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest(r) => r.status(),
            Refusal::NoRoute => 404,
            Refusal::AllDown | Refusal::OverLimit => 503,
            Refusal::BadGateway => 502,
            Refusal::GatewayTimeout => 504,
            Refusal::PerIpConnections | Refusal::PerIpRate { .. } => 429,
        }
    }

    /// The `wslb_connections_rejected_total` reason, which is also the access-log outcome.
    pub fn reason(self) -> Rejected {
        match self {
            Refusal::BadRequest(r) => match r {
                Reject::Malformed(_) => Rejected::BadRequest400,
                Reject::NotGet => Rejected::MethodNotAllowed405,
                Reject::NotUpgrade(_) | Reject::BadVersion => Rejected::UpgradeRequired426,
                Reject::TooLarge => Rejected::TooLarge431,
                Reject::UriTooLong => Rejected::UriTooLong414,
                Reject::BodyTooLarge => Rejected::TooLarge413,
            },
            Refusal::NoRoute => Rejected::NoRoute,
            Refusal::AllDown => Rejected::AllBackendsDown,
            Refusal::BadGateway | Refusal::GatewayTimeout => Rejected::BackendFailed,
            Refusal::OverLimit => Rejected::Limit,
            Refusal::PerIpConnections => Rejected::PerIpConnections,
            Refusal::PerIpRate { .. } => Rejected::PerIpRate,
        }
    }

    /// The complete response, closing the connection. Static but for a rate refusal's
    /// `Retry-After`.
    pub fn response(self) -> Cow<'static, [u8]> {
        Cow::Borrowed(match self {
            Refusal::BadRequest(r) => match r {
                Reject::Malformed(_) => BAD_REQUEST,
                Reject::NotGet => METHOD_NOT_ALLOWED,
                Reject::NotUpgrade(_) | Reject::BadVersion => UPGRADE_REQUIRED,
                Reject::TooLarge => TOO_LARGE,
                Reject::UriTooLong => URI_TOO_LONG,
                Reject::BodyTooLarge => BODY_TOO_LARGE,
            },
            Refusal::NoRoute => NOT_FOUND,
            Refusal::AllDown => SERVICE_UNAVAILABLE,
            Refusal::BadGateway => BAD_GATEWAY,
            Refusal::GatewayTimeout => GATEWAY_TIMEOUT,
            Refusal::OverLimit => OVER_LIMIT,
            Refusal::PerIpConnections => PER_IP_CONNECTIONS,
            Refusal::PerIpRate { retry_after } => return Cow::Owned(per_ip_rate(retry_after)),
        })
    }
}

// Complete responses with `Connection: close`; `responses_are_consistent` checks each
// status line against `status()` and each Content-Length against its body.
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 30\r\n\r\nbad websocket upgrade request\n";
const METHOD_NOT_ALLOWED: &[u8] = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n\
Content-Type: text/plain\r\nConnection: close\r\nContent-Length: 27\r\n\r\n\
websocket upgrades use GET\n";
const UPGRADE_REQUIRED: &[u8] = b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nContent-Type: text/plain\r\nConnection: close\r\n\
Content-Length: 29\r\n\r\nthis is a websocket endpoint\n";
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
Content-Type: text/plain\r\nConnection: close\r\nContent-Length: 25\r\n\r\n\
request header too large\n";
const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 24\r\n\r\nrequest target too long\n";
const BODY_TOO_LARGE: &[u8] = b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 23\r\n\r\nrequest body too large\n";
const OVER_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Connection: close\r\nRetry-After: 1\r\nContent-Length: 33\r\n\r\nconnection limit reached, retry\r\n";
/// `Retry-After: 1`: a place frees up when one of the client's connections closes, which
/// nothing predicts.
const PER_IP_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
Content-Type: text/plain\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 39\r\n\r\n\
too many connections from your address\n";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 26\r\n\r\nno route for this request\n";
const SERVICE_UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Connection: close\r\nRetry-After: 1\r\nContent-Length: 22\r\n\r\nno backend is healthy\n";
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 28\r\n\r\nno backend could be reached\n";
const GATEWAY_TIMEOUT: &[u8] = b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 27\r\n\r\nthe backend did not answer\n";

fn per_ip_rate(retry_after: u32) -> Vec<u8> {
    const BODY: &str = "too many new connections from your address\n";
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n\
         Retry-After: {retry_after}\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every() -> Vec<Refusal> {
        let rejects = [
            Reject::Malformed(""),
            Reject::NotGet,
            Reject::NotUpgrade(""),
            Reject::BadVersion,
            Reject::TooLarge,
            Reject::UriTooLong,
            Reject::BodyTooLarge,
        ];
        rejects
            .into_iter()
            .map(Refusal::from)
            .chain([
                Refusal::NoRoute,
                Refusal::AllDown,
                Refusal::BadGateway,
                Refusal::GatewayTimeout,
                Refusal::OverLimit,
                Refusal::PerIpConnections,
                Refusal::PerIpRate { retry_after: 1 },
                Refusal::PerIpRate {
                    retry_after: 4_000_000_000,
                },
            ])
            .collect()
    }

    /// Each response parses, its status line is `status()`, it closes the connection, and
    /// its Content-Length is its body's length.
    #[test]
    fn responses_are_consistent() {
        for r in every() {
            let bytes = r.response();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let head = match resp.parse(&bytes) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("{r:?}: {other:?}"),
            };
            assert_eq!(resp.code, Some(r.status()), "{r:?}");
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| std::str::from_utf8(h.value).unwrap().to_string())
            };
            assert_eq!(header("connection").as_deref(), Some("close"), "{r:?}");
            let length: usize = header("content-length").unwrap().parse().unwrap();
            assert_eq!(length, bytes.len() - head, "{r:?}");
            if let Refusal::BadRequest(reject) = r {
                assert_eq!(r.status(), reject.status());
            }
        }
    }

    /// The counter's reason follows the variant, not a status number: 503 for a full
    /// instance and 503 for a dead route are different reasons.
    #[test]
    fn reasons_tell_apart_equal_statuses() {
        assert_eq!(Refusal::OverLimit.status(), Refusal::AllDown.status());
        assert_ne!(Refusal::OverLimit.reason(), Refusal::AllDown.reason());
        assert_eq!(
            Refusal::from(Reject::BodyTooLarge).reason().label(),
            "bad_request_413"
        );
        assert_eq!(Refusal::GatewayTimeout.reason().label(), "backend_failed");
    }
}
