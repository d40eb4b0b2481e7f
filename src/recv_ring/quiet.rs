//! Ending every receive of the ring and waiting until none is in flight: what a trim does
//! before it gives the buffers' pages back (see [`RecvRing::trim`](super::RecvRing::trim)),
//! and what retiring or dropping the ring does.

use std::cell::RefCell;

use super::slots::Slots;
use super::uring::Uring;

/// Cancel rounds tried before giving up (see [`end_every_receive`]): one suffices unless an
/// io-wq worker re-arms a receive as it is cancelled.
const QUIET_ROUNDS: u32 = 4;
/// How long a round waits for completions: a cancelled poll completes in this thread's
/// task work, so this is only a bound on a round that finds nothing.
const QUIET_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// Cancels every receive in `slots` and waits for their last completions, which `reap`
/// hands over as usual: true once none is in flight. Each receive is cancelled by its own
/// `user_data` (a hash lookup in the kernel; `IORING_ASYNC_CANCEL_ANY` searches the whole
/// table once per request it cancels: 17 ms for 2,000 receives here), in batches that fit
/// the completion queue (a cancel's completion and its receive's last one). A request that
/// slipped past its cancel (an io-wq worker re-arming its poll as the cancel ran) is caught
/// by the next round; after [`QUIET_ROUNDS`] rounds this gives up rather than block its
/// worker.
pub(super) fn end_every_receive(uring: &Uring, slots: &RefCell<Slots>, reap: impl Fn()) -> bool {
    let batch = (uring.cq_entries() / 2) as usize;
    for _ in 0..QUIET_ROUNDS {
        let armed = slots.borrow().armed();
        if armed.is_empty() {
            return true;
        }
        for ids in armed.chunks(batch) {
            for &id in ids {
                if let Err(e) = uring.queue_cancel(id) {
                    tracing::error!("receive ring: trim: cancel: {e}");
                    return false;
                }
            }
            // The cancels' own completions come at once, the cancelled receives' as this
            // thread's task work runs (at the latest on the way out of this call).
            if let Err(e) = uring.submit_and_wait_briefly(QUIET_WAIT) {
                tracing::error!("receive ring: trim: waiting for cancellations: {e}");
                return false;
            }
            reap();
        }
    }
    !slots.borrow().any_armed()
}
