//! wslb's own frames on a relay, and its end: keepalive pings, the closes owed after a
//! protocol violation or a lost source, the close-grace deadline, and shutting the
//! destination's write side down.

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent};

use super::link::{Link, Readiness};
use super::{End, Pump};
use crate::frame::{self, Sender, Violation};
use crate::metrics::Event;

impl<Src, Dst> Pump<Src, Dst>
where
    Src: CancelableAsyncReadRent + Readiness,
    Dst: AsyncWriteRent,
{
    /// Sends wslb's keepalive ping to the destination (at a frame boundary).
    pub(super) async fn send_ping(&mut self, link: &Link<'_>) {
        // Marked even when nothing can be sent, so that the ping is not due again at once.
        link.env.registry.pinged(link.key, 1 - self.me());
        if self.close_sent || self.dst_failed {
            return;
        }
        link.env.stats.count(Event::KeepalivePing);
        let frame = frame::encode_ping(self.sender() == Sender::Client);
        if self.dst.write_all(frame).await.0.is_err() {
            self.dst_failed = true;
        }
    }

    /// The source broke the protocol: tell the destination the source is gone, and have the
    /// other pump send the source the close code RFC 6455 gives for the violation.
    pub(super) async fn on_violation(&mut self, v: Violation, link: &Link<'_>) {
        tracing::debug!(from = ?self.sender(), "protocol violation: {v}");
        link.env.stats.count(match self.sender() {
            Sender::Client => Event::ClientProtocolError,
            Sender::Backend => Event::BackendProtocolError,
        });
        if link.violation.get().is_none() {
            link.violation.set(Some((self.sender(), v)));
        }
        link.request_close(1 - self.me(), v.close_code());
        let (code, why) = self.lost_source_close();
        self.send_close(link, code, why).await;
    }

    /// The close owed to this pump's destination, which broke the protocol, if any.
    pub(super) fn take_owed(&self, link: &Link<'_>) -> Option<(u16, &'static str)> {
        let code = link.close_request[self.me()].take()?;
        // This pump's destination is the offender: the backend for client->backend.
        let reason = match self.sender() {
            Sender::Client => "backend protocol error",
            Sender::Backend => "client protocol error",
        };
        Some((code, reason))
    }

    /// The close wslb sends the destination when the source is gone: 1001 (going away) to a
    /// backend whose client left, 1011 (unexpected condition) to a client whose backend
    /// failed.
    pub(super) fn lost_source_close(&self) -> (u16, &'static str) {
        match self.sender() {
            Sender::Client => (1001, "client went away"),
            Sender::Backend => (1011, "backend connection lost"),
        }
    }

    pub(super) async fn send_close(&mut self, link: &Link<'_>, code: u16, reason: &'static str) {
        if self.close_sent || self.dst_failed {
            return;
        }
        self.mark_close_sent(link);
        // Towards a backend wslb speaks as a client, and client frames must be masked.
        let frame = frame::encode_close(code, reason, self.sender() == Sender::Client);
        if self.dst.write_all(frame).await.0.is_err() {
            self.dst_failed = true;
        }
    }

    pub(super) fn mark_close_sent(&mut self, link: &Link<'_>) {
        self.close_sent = true;
        if self.deadline.is_none() {
            self.deadline = Some(link.env.registry.deadline_in(link.env.relay.close_grace));
        }
    }

    /// EOF or an error on the source: pass a close on (if none went yet and the destination
    /// is at a frame boundary), then end the destination's write side.
    pub(super) async fn source_ended(&mut self, link: &Link<'_>) -> End {
        let end = if self.close_sent {
            End::Closed
        } else {
            let mid_frame = self.walker.pending > 0;
            if !mid_frame {
                let owed = self.take_owed(link);
                let (code, reason) = owed.unwrap_or_else(|| self.lost_source_close());
                self.send_close(link, code, reason).await;
            }
            End::SourceLost { mid_frame }
        };
        if !self.dst_failed {
            let _ = self.dst.shutdown().await;
        }
        end
    }
}
