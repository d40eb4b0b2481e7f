//! The relay design wslb did *not* choose, kept to measure it against: fastwebsockets'
//! `WebSocketRead`/`WebSocketWrite` on monoio's poll-io bridge (readiness + recv/send, not
//! io_uring ops), client frames unmasked for validation and remasked in place with the same
//! key. Same handshake, workers and SO_REUSEPORT listeners as wslb; only the frame relay
//! differs. The load bench runs it beside wslb as the target `pollio`:
//!
//!   cargo build --release --example fastwebsockets_relay
//!   cargo bench --bench load -- --targets wslb,pollio
//!
//! or on its own:
//!
//!   cargo run --release --example fastwebsockets_relay -- LISTEN BACKEND[,BACKEND...] WORKERS

use std::net::SocketAddr;

use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, IntoPollIo};
use monoio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = a[1].parse().unwrap();
    let backends: Vec<SocketAddr> = a[2].split(',').map(|b| b.parse().unwrap()).collect();
    let backends: &'static [SocketAddr] = backends.leak();
    // Round robin across workers, as wslb does.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let workers: usize = a[3].parse().unwrap();
    let listeners = wslb::listener::bind(listen, workers, 4096).unwrap();
    let running = wslb::worker::spawn(
        "pollio",
        listeners,
        wslb::config::IoDriver::IoUring,
        move |_, l, _control| {
            let limit = wslb::listener::ConnectionLimit::unlimited();
            // Never cancelled: the example runs until the process ends.
            let forever = monoio::io::Canceller::new();
            wslb::listener::accept_loop(l, limit, forever.handle(), true, move |s, peer, permit| {
                let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let backend = backends[i % backends.len()];
                monoio::spawn(async move {
                    let _ = proxy(s, peer, backend).await;
                    drop(permit);
                });
            })
        },
    )
    .unwrap();
    running.wait();
}

async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let (len, cap) = (buf.len(), buf.capacity());
        let (r, slice) = s.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        if r? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
    }
}

async fn proxy(
    mut client: TcpStream,
    peer: SocketAddr,
    addr: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    let req = read_head(&mut client).await?;
    let mut h = [httparse::EMPTY_HEADER; wslb::handshake::MAX_HEADERS];
    let up = wslb::handshake::parse_request(&req, &mut h)
        .map_err(|e| e.to_string())?
        .ok_or("partial")?;
    let fwd = up.forward_head(
        peer.ip(),
        wslb::stream::Scheme::Http,
        wslb::handshake::Extensions::Strip,
    );
    let mut backend = TcpStream::connect_addr(addr).await?;
    backend.set_nodelay(true)?;
    backend.write_all(fwd).await.0?;
    let resp = read_head(&mut backend).await?;
    client.write_all(resp).await.0?;

    let (cr, cw) = tokio::io::split(client.into_poll_io()?);
    let (br, bw) = tokio::io::split(backend.into_poll_io()?);
    // Client -> backend: fastwebsockets unmasks (it validates UTF-8 on the plain payload),
    // then the frame is remasked in place with the client's own key and written as is.
    let (mut up_r, mut up_w) = fastwebsockets::after_handshake_split(cr, bw, Role::Server);
    let (mut down_r, mut down_w) = fastwebsockets::after_handshake_split(br, cw, Role::Client);
    up_r.set_auto_close(false);
    up_r.set_auto_pong(false);
    down_r.set_auto_close(false);
    down_r.set_auto_pong(false);
    up_w.set_auto_apply_mask(false);
    down_w.set_auto_apply_mask(false);
    let up = async {
        loop {
            let mut f = up_r
                .read_frame(&mut |_| async { Ok::<_, WebSocketError>(()) })
                .await?;
            f.mask();
            let close = f.opcode == OpCode::Close;
            up_w.write_frame(f).await?;
            if close {
                return Ok::<_, WebSocketError>(());
            }
        }
    };
    let down = async {
        loop {
            let f: Frame = down_r
                .read_frame(&mut |_| async { Ok::<_, WebSocketError>(()) })
                .await?;
            let close = f.opcode == OpCode::Close;
            down_w.write_frame(f).await?;
            if close {
                return Ok::<_, WebSocketError>(());
            }
        }
    };
    let _ = monoio::join!(up, down);
    Ok(())
}
