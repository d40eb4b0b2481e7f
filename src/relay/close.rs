//! The ends of a relay direction: its close state, the closes wslb sends of its own (a
//! drain, an idle or retired connection, a lost source, an owed protocol-error close), its
//! keepalive pings, and how a pump finishes.

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::End;
use super::link::{Link, Waited};
use super::pump::Pump;
use crate::frame::{self, Side, Violation};
use crate::metrics::{ClosedBy, Event};
use crate::stream::Readiness;

/// How long the close owed to an offender may take once the close deadline has passed.
const LAST_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a pump's destination stands in the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseState {
    /// Frames flow to the destination.
    Open,
    /// A close went to the destination (the source's, or one of wslb's own): nothing more
    /// is forwarded (RFC 6455 §5.5.1), and the source must end its TCP by the relay's
    /// close deadline.
    CloseSent,
    /// Writing to the destination failed: nothing more is written to it. The other pump
    /// reads that socket and sees it fail too.
    DstFailed,
}

impl<Src, Dst> Pump<Src, Dst>
where
    Src: AsyncReadRent + Readiness,
    Dst: AsyncWriteRent,
{
    /// The source's close went to the destination.
    pub(super) fn close_sent(&mut self, link: &Link<'_>) {
        if self.close == CloseState::Open {
            self.close = CloseState::CloseSent;
        }
        link.start_closing();
    }

    pub(super) fn dst_failed(&mut self, link: &Link<'_>) {
        self.close = CloseState::DstFailed;
        link.start_closing();
    }

    /// Writes one of wslb's own frames to the destination (a close or a ping, at a frame
    /// boundary), bounded by the close deadline once closing has begun.
    async fn send_own(&mut self, link: &Link<'_>, frame: Vec<u8>) {
        let sent = {
            let write = std::pin::pin!(self.dst.write_all(frame));
            let done = link.wait(write, std::future::pending()).await;
            matches!(done, Waited::Done((Ok(_), _)))
        };
        if !sent {
            self.dst_failed(link);
        }
    }

    /// Sends wslb's keepalive ping to the destination (at a frame boundary).
    pub(super) async fn send_ping(&mut self, link: &Link<'_>) {
        let to = self.from.other();
        // Marked even when nothing can be sent, so that the ping is not due again at once.
        link.pinged(to);
        if self.close != CloseState::Open {
            return;
        }
        link.count(Event::KeepalivePing);
        // Towards a backend wslb speaks as a client, and client frames must be masked.
        self.send_own(link, frame::encode_ping(to == Side::Backend))
            .await;
    }

    /// Sends one of wslb's closes to the destination, unless a close went there already.
    pub(super) async fn send_close(&mut self, link: &Link<'_>, code: u16, reason: &'static str) {
        if self.close != CloseState::Open {
            return;
        }
        self.close_sent(link);
        let to = self.from.other();
        self.send_own(link, frame::encode_close(code, reason, to == Side::Backend))
            .await;
        if self.close != CloseState::DstFailed {
            link.closed(ClosedBy::Wslb, Some(code));
        }
    }

    /// Sends the close owed to the destination (which broke the protocol), if any.
    pub(super) async fn send_owed_close(&mut self, link: &Link<'_>) {
        if let Some((code, reason)) = link.take_owed(self.from) {
            self.send_close(link, code, reason).await;
        }
    }

    /// The source broke the protocol: tell the destination the source is gone, and have the
    /// other pump send the source the close code RFC 6455 gives for the violation.
    pub(super) async fn on_violation(&mut self, v: Violation, link: &Link<'_>) {
        tracing::debug!(from = ?self.from, "protocol violation: {v}");
        link.count(match self.from {
            Side::Client => Event::ClientProtocolError,
            Side::Backend => Event::BackendProtocolError,
        });
        link.violated(self.from, v);
        link.owe_close(self.from.other(), v.close_code());
        let (code, why) = self.lost_source_close();
        self.send_close(link, code, why).await;
    }

    /// The close wslb sends the destination when the source is gone: 1001 (going away) to a
    /// backend whose client left, 1011 (unexpected condition) to a client whose backend
    /// failed.
    fn lost_source_close(&self) -> (u16, &'static str) {
        match self.from {
            Side::Client => (1001, "client went away"),
            Side::Backend => (1011, "backend connection lost"),
        }
    }

    /// EOF or an error on the source: pass a close on (if none went yet and the destination
    /// is at a frame boundary), then end the destination's write side.
    pub(super) async fn source_ended(&mut self, link: &Link<'_>) -> End {
        let end = if self.close != CloseState::Open {
            End::Closed
        } else {
            let mid_frame = self.walker.pending > 0;
            if !mid_frame {
                let (code, reason) = link
                    .take_owed(self.from)
                    .unwrap_or_else(|| self.lost_source_close());
                self.send_close(link, code, reason).await;
            }
            End::SourceLost { mid_frame }
        };
        if self.close != CloseState::DstFailed {
            let shutdown = std::pin::pin!(self.dst.shutdown());
            let _ = link.wait(shutdown, std::future::pending()).await;
        }
        end
    }

    /// The close deadline passed with the source still open: the owed close, if any and if
    /// the destination stands at a frame boundary, goes out, then the pump ends and its
    /// halves close with the relay.
    pub(super) async fn expired(&mut self, link: &Link<'_>) -> End {
        if let (Some((code, reason)), 0, CloseState::Open) =
            (link.take_owed(self.from), self.walker.pending, self.close)
        {
            // Past the deadline every `Link::wait` expires at once, which could cancel the
            // write before the kernel ran it. A close frame (at most 139 bytes) fits any
            // socket buffer at once unless the peer stopped reading; this bounds that peer.
            let frame = frame::encode_close(code, reason, self.from.other() == Side::Backend);
            let sent = monoio::time::timeout(LAST_WRITE, self.dst.write_all(frame)).await;
            if matches!(sent, Ok((Ok(_), _))) {
                link.closed(ClosedBy::Wslb, Some(code));
            }
        }
        End::GraceExpired
    }
}
