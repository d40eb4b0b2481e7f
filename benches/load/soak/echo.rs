//! The soak's echo backend: this same bench binary started again with `WSLB_SOAK_ECHO` set,
//! so it is a process of its own that the soak can SIGKILL and start again. It echoes every
//! data frame unchanged (unmasked, same opcode and FIN), answers ping with pong and close
//! with close, and names itself in its 101 (`X-Soak-Backend: INDEX.INCARNATION`), which
//! wslb relays as it is: each client then knows which backend (and which life of it) holds
//! its connection, so a close can be checked against what happened to that backend.

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

/// The variable that turns the bench binary into an echo backend: `ADDR INDEX INCARNATION`.
pub const ENV: &str = "WSLB_SOAK_ECHO";

/// Request heads up to 8 KiB, as wslb's default.
const MAX_HEAD: usize = 8192;

/// If `WSLB_SOAK_ECHO` is set, serves as an echo backend until killed; otherwise returns.
pub fn serve_if_asked() {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let mut f = spec.split(' ');
    let (Some(addr), Some(index), Some(life)) = (f.next(), f.next(), f.next()) else {
        panic!("{ENV}={spec:?}: want ADDR INDEX INCARNATION");
    };
    let addr: SocketAddr = addr.parse().expect("echo address");
    let name = format!("{index}.{life}");
    // std sets SO_REUSEADDR on listeners, so a restart binds the port again at once even
    // with the killed life's connections in TIME_WAIT.
    let std_listener = std::net::TcpListener::bind(addr).expect("echo backend bind");
    std_listener.set_nonblocking(true).unwrap();
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .enable_timer()
        .build()
        .expect("io_uring runtime for the echo backend");
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).unwrap();
        let name: &'static str = Box::leak(name.into_boxed_str());
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    monoio::spawn(serve(s, name));
                }
                // Out of descriptors or similar: wait rather than spin.
                Err(_) => monoio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    });
    std::process::exit(0);
}

async fn read_more(s: &mut TcpStream, mut buf: Vec<u8>, want: usize) -> Option<Vec<u8>> {
    if buf.capacity() < want.max(buf.len() + 1) {
        buf.reserve(want.max(buf.len() + 4096) - buf.len());
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    match res {
        Ok(n) if n > 0 => Some(slice.into_inner()),
        _ => None,
    }
}

/// One connection: the upgrade, then frames echoed in the order they came.
async fn serve(mut s: TcpStream, name: &'static str) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return;
        }
        match read_more(&mut s, buf, 0).await {
            Some(b) => buf = b,
            None => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let Some(key) = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    }) else {
        return;
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nX-Soak-Backend: {name}\r\n\r\n",
        wslb::handshake::accept_key(key.as_bytes())
    );
    if s.write_all(answer.into_bytes()).await.0.is_err() {
        return;
    }
    buf.drain(..head_end);
    loop {
        // Every whole frame in the buffer is answered with one write.
        let mut out = Vec::new();
        let mut used = 0;
        let mut closing = false;
        let mut want = 0;
        while let Some(h) = wslb::frame::parse_header(&buf[used..]) {
            let end = used + h.len + h.payload_len as usize;
            if buf.len() < end {
                want = end;
                break;
            }
            let mut payload = buf[used + h.len..end].to_vec();
            if let Some(m) = h.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= m[i % 4];
                }
            }
            used = end;
            let (fin, op) = (h.fin, h.raw_opcode);
            let reply = match op {
                0..=2 => Some(op),
                8 => {
                    closing = true;
                    Some(8)
                }
                9 => Some(10),
                _ => None,
            };
            if let Some(op) = reply {
                frame_into(&mut out, fin || op >= 8, op, &payload);
            }
            if closing {
                break;
            }
        }
        buf.drain(..used);
        if !out.is_empty() && s.write_all(out).await.0.is_err() {
            return;
        }
        if closing {
            // The server closes the TCP connection first (RFC 6455 §7.1.1).
            return;
        }
        // Large frames read into one buffer of their size; an idle connection drops back
        // to 4 KiB so 3,000 connections per backend stay small.
        if buf.is_empty() && buf.capacity() > 16 << 10 {
            buf = Vec::with_capacity(4096);
        }
        match read_more(&mut s, buf, want).await {
            Some(b) => buf = b,
            None => return,
        }
    }
}

/// An unmasked frame, as a server sends it.
fn frame_into(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    let n = payload.len();
    out.push(if fin { 0x80 } else { 0 } | opcode);
    if n < 126 {
        out.push(n as u8);
    } else if n < 65536 {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}
