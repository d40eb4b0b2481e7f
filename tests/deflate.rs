//! permessage-deflate end to end (`extensions = "pass"`, the default): a real compressing
//! client and backend (Python `websockets`) negotiate it through wslb, which relays the
//! compressed frames untouched; `extensions = "strip"` negotiates nothing; the relay's RSV
//! rules (RSV1 only on a compressed message's first frame, only when negotiated) hold
//! against raw frames; a backend accepting what was not offered gets 502.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::*;
use wslb::handshake::Extensions;

fn python_backend(more: &[&str]) -> PythonServer {
    require_websockets();
    python_server("deflate/server.py", more)
}

fn python_client(lb: SocketAddr, want: &str) -> String {
    let port = lb.port().to_string();
    common::python_client(
        "deflate/client.py",
        &["--port", &port, "--want-extensions", want],
        &[
            "ok text echo",
            "ok binary echo",
            "ok 1 MiB echo",
            "ok fragmented echo",
            "ok close code",
        ],
    )
}

/// Bytes relayed from the client, over all workers.
fn client_bytes(lb: &wslb::Instance) -> u64 {
    lb.handle().snapshot().totals.bytes[0]
}

#[test]
fn a_compressing_client_and_backend_negotiate_deflate_through_wslb_and_it_stays_compressed() {
    let backend = python_backend(&[]);
    let lb = balancer(&[backend.addr], 1, |_| {});
    let text = python_client(lb.local_addr, "permessage-deflate");
    assert!(text.contains("extensions permessage-deflate"), "{text}");
    // The 1 MiB message of a repeated 16 bytes crossed as a few KiB of deflate: the relay
    // forwarded the compressed frames as they were.
    let sent = client_bytes(&lb);
    assert!(
        sent < 100_000,
        "{sent} bytes from the client: not compressed"
    );

    // Strip: nothing negotiated, the same messages cross uncompressed.
    let lb = balancer(&[backend.addr], 1, |c| c.extensions = Extensions::Strip);
    python_client(lb.local_addr, "none");
    let sent = client_bytes(&lb);
    assert!(sent > 1 << 20, "{sent} bytes from the client");
}

/// A backend whose 101 carries `extensions` (a Sec-WebSocket-Extensions value, or none);
/// the request head it got, then each chunk of bytes it reads after, is sent on the
/// channel. It sends nothing after the 101.
fn raw_backend(
    extensions: Option<&'static str>,
) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = scripted_backend_raw(move |mut s| {
        use std::io::Read;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let _ = tx.lock().unwrap().send(head);
        let ext = extensions.map_or(String::new(), |e| {
            format!("Sec-WebSocket-Extensions: {e}\r\n")
        });
        let _ = s.write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{ext}\r\n"
            )
            .as_bytes(),
        );
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = tx.lock().unwrap().send(buf[..n].to_vec());
        }
    });
    (addr, rx)
}

fn offer(lb: SocketAddr, extensions: &str) -> (String, Peer) {
    let mut p = Peer::client(lb);
    p.send_raw(
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: {extensions}\r\n\r\n"
        )
        .as_bytes(),
    );
    (p.read_head(), p)
}

#[test]
fn only_deflate_offers_reach_the_backend_and_its_choice_comes_back() {
    let (addr, heads) = raw_backend(Some("permessage-deflate; server_no_context_takeover"));
    let lb = balancer(&[addr], 1, |_| {});
    let (head, _p) = offer(
        lb.local_addr,
        "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits, x-other",
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let forwarded = String::from_utf8(heads.recv().unwrap()).unwrap();
    assert!(
        forwarded
            .contains("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
        "{forwarded}"
    );
    assert!(
        !forwarded.contains("x-webkit") && !forwarded.contains("x-other"),
        "{forwarded}"
    );
}

#[test]
fn rsv1_is_relayed_on_a_compressed_message_and_refused_where_rfc_7692_forbids_it() {
    let (addr, got) = raw_backend(Some("permessage-deflate"));
    let lb = balancer(&[addr], 1, |_| {});
    let m = Some([1, 2, 3, 4]);
    // The first frame of a message with RSV1 reaches the backend byte for byte.
    let (head, mut p) = offer(lb.local_addr, "permessage-deflate");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    got.recv().unwrap(); // the request head
    let mut f = frame(false, 1, b"abc", m);
    f[0] |= 0x40;
    p.send_raw(&f);
    let relayed = got.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(relayed, f, "relayed untouched");
    let mut c = frame(true, 0, b"def", m);
    c[0] |= 0x40; // RSV1 on a continuation: refused
    p.send_raw(&c);
    let (code, _) = p.expect_close();
    assert_eq!(code, 1002, "RSV1 on a continuation is a protocol error");

    // RSV1 on a ping, and RSV2 on a data frame: refused too.
    for (op, bits) in [(9u8, 0x40u8), (1, 0x20)] {
        let (_, mut p) = offer(lb.local_addr, "permessage-deflate");
        let mut f = frame(true, op, b"x", m);
        f[0] |= bits;
        p.send_raw(&f);
        assert_eq!(p.expect_close().0, 1002, "opcode {op} bits {bits:#x}");
    }

    // Nothing negotiated (the backend's 101 names no extension): RSV1 is refused.
    let (plain, _h) = raw_backend(None);
    let lb = balancer(&[plain], 1, |_| {});
    let (head, mut p) = offer(lb.local_addr, "permessage-deflate");
    assert!(!head.contains("Extensions"), "{head}");
    let mut f = frame(true, 1, b"abc", m);
    f[0] |= 0x40;
    p.send_raw(&f);
    assert_eq!(p.expect_close().0, 1002);
}

#[test]
fn a_backend_accepting_an_extension_not_offered_gets_502() {
    let (addr, _h) = raw_backend(Some("permessage-deflate"));
    let lb = balancer(&[addr], 1, |c| c.extensions = Extensions::Strip);
    let (head, _) = offer(lb.local_addr, "permessage-deflate");
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let (other, _h) = raw_backend(Some("x-unknown"));
    let lb = balancer(&[other], 1, |_| {});
    let (head, _) = offer(lb.local_addr, "permessage-deflate");
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // Review of issue 20: with `extensions = "pass"`, a client that offers no
    // permessage-deflate (only an unknown extension, which wslb removes) must not be handed
    // a 101 accepting it: the relay would allow RSV1 and the client would fail.
    let (eager, _h) = raw_backend(Some("permessage-deflate"));
    let lb = balancer(&[eager], 1, |_| {});
    let (head, _) = offer(lb.local_addr, "x-unknown");
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
}
