//! A trim: the ring's buffers' pages given back to the OS while its worker is idle, once
//! every receive has ended so that the kernel cannot fill a buffer meanwhile (see
//! [`RecvRing::trim`](super::RecvRing::trim)).

use std::io;

use io_uring::{opcode, types};

use super::{CANCEL, Inner, OPEN, Phase, Want};

/// Cancel rounds a trim tries before giving up (see `Inner::end_every_receive`): one
/// suffices unless an io-wq worker re-arms a receive as it is cancelled.
const QUIET_ROUNDS: u32 = 4;
/// How long a trim's round waits for completions: a cancelled poll completes in this
/// thread's task work, so this is only a bound on a round that finds nothing.
const QUIET_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

impl Inner {
    pub(super) fn trim(&self) -> bool {
        self.reap();
        if self.bufs.free() != u32::from(self.bufs.entries()) {
            return false;
        }
        if self.trimmed_at.get() == Some(self.stats.ring_bytes()) {
            return true;
        }
        if self.phase.get() == Phase::Retired {
            return false;
        }
        self.phase.set(Phase::Quiet);
        let ended = self.end_every_receive();
        // SAFETY: `Provided::trim`'s contract: when `ended`, every receive of this ring has
        // posted its last completion and it was reaped (the request no longer exists, so
        // nothing can select or fill a buffer, io_uring's documented meaning of a
        // completion without `IORING_CQE_F_MORE`), and every completion naming a buffer
        // was reaped with them (a request posts its last completion after every other).
        // Only this ring's requests use its buffer group. `Provided::trim` itself checks
        // that no buffer is out (no `Chunk` refers to one).
        #[allow(unsafe_code)]
        let trimmed = ended && unsafe { self.bufs.trim() };
        if trimmed {
            self.trimmed_at.set(Some(self.stats.ring_bytes()));
        }
        self.phase.set(Phase::Running);
        self.rearm_ended();
        trimmed
    }

    /// Cancels every receive of the ring and waits for their last completions (reaping
    /// them as usual): true once none is in flight. Each receive is cancelled by its own
    /// `user_data` (a hash lookup in the kernel; `IORING_ASYNC_CANCEL_ANY` searches the
    /// whole table once per request it cancels: 17 ms for 2,000 receives here), in batches
    /// that fit the completion queue (a cancel's completion and its receive's last one).
    /// A request that slipped past its cancel (an io-wq worker re-arming its poll as the
    /// cancel ran) is caught by the next round; after [`QUIET_ROUNDS`] rounds the trim
    /// gives up rather than block its worker.
    pub(super) fn end_every_receive(&self) -> bool {
        let batch = (self.ring.borrow().params().cq_entries() / 2) as usize;
        for _ in 0..QUIET_ROUNDS {
            let armed: Vec<u32> = (self.slots.borrow().iter().enumerate())
                .filter(|(_, s)| s.armed)
                .map(|(id, _)| id as u32)
                .collect();
            if armed.is_empty() {
                return true;
            }
            for ids in armed.chunks(batch) {
                for &id in ids {
                    let cancel = opcode::AsyncCancel::new(u64::from(id))
                        .build()
                        .user_data(CANCEL);
                    if let Err(e) = self.queue(&cancel) {
                        tracing::error!("receive ring: trim: cancel: {e}");
                        return false;
                    }
                }
                if let Err(e) = self.submit_and_wait_briefly() {
                    tracing::error!("receive ring: trim: waiting for cancellations: {e}");
                    return false;
                }
                self.reap();
            }
        }
        !self.any_armed()
    }

    /// Submits what is queued and waits at most [`QUIET_WAIT`] for a completion: the
    /// cancels' own come at once, the cancelled receives' as this thread's task work runs
    /// (at the latest on the way out of this call).
    fn submit_and_wait_briefly(&self) -> io::Result<()> {
        let wait = types::Timespec::from(QUIET_WAIT);
        let args = types::SubmitArgs::new().timespec(&wait);
        let entered = self.ring.borrow().submitter().submit_with_args(1, &args);
        match entered {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Err(e),
            _ => Ok(()),
        }
    }

    fn any_armed(&self) -> bool {
        self.slots.borrow().iter().any(|s| s.armed)
    }

    /// Re-arms every receive a trim ended (and any starved one: every buffer is free).
    fn rearm_ended(&self) {
        let due: Vec<u32> = (self.slots.borrow().iter().enumerate())
            .filter(|(_, s)| s.want == Want::Run && !s.armed && s.end == OPEN)
            .map(|(id, _)| id as u32)
            .collect();
        for &id in &due {
            if let Err(e) = self.arm_deferred(id) {
                self.fail(id, &e);
            }
        }
        if !due.is_empty() {
            self.submit_logged();
        }
    }
}
