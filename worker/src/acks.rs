//! Settling deliveries: acknowledgements are coalesced into `basic.ack` frames with `multiple`
//! where the broker's semantics allow it, and every settlement of a channel goes out in order.
//!
//! A report batch confirms the outcomes of many tasks at once; acknowledging each of their
//! deliveries with a frame of its own costs the broker and the worker a frame, a wake-up and a
//! write each. `basic.ack` with `multiple` settles every unacknowledged delivery of the channel up
//! to a tag, so it may only be used up to the first delivery that is still running: [`Window`]
//! (pure) tracks, per channel, which delivered tags are unsettled and which of them are finished,
//! and plans the fewest frames that settle exactly the finished ones. [`Acks`] does the I/O for
//! the channels of one broker connection, one flush at a time so that frames keep their order
//! (a late single ack for a tag a `multiple` already covered would close the channel).
//!
//! Returning a delivery to its queue (`basic.nack` with requeue) goes through the same path and
//! is sent before any acknowledgement planned after it, so a `multiple` never covers it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Notify;

/// One frame that settles deliveries of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `basic.ack`; with `multiple`, every unsettled tag up to `tag` as well.
    Ack { tag: u64, multiple: bool },
    /// `basic.nack` with requeue: the delivery goes back to its queue.
    Requeue { tag: u64 },
}

/// The unsettled deliveries of one channel.
#[derive(Debug, Default)]
pub struct Window {
    /// Delivered and not yet settled (acked or returned), in tag order.
    unsettled: BTreeSet<u64>,
    /// Unsettled tags whose acknowledgement is due.
    finished: BTreeSet<u64>,
    /// Tags to return to their queue, in the order asked.
    requeue: Vec<u64>,
}

impl Window {
    /// A delivery arrived (deliveries of a channel arrive in increasing tag order).
    pub fn delivered(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    /// The delivery's outcome is safe: acknowledge it.
    pub fn finish(&mut self, tag: u64) {
        if self.unsettled.contains(&tag) {
            self.finished.insert(tag);
        }
    }

    /// Return the delivery to its queue.
    pub fn requeue(&mut self, tag: u64) {
        if self.unsettled.contains(&tag) && !self.finished.contains(&tag) && !self.requeue.contains(&tag) {
            self.requeue.push(tag);
        }
    }

    /// True when nothing waits to be sent.
    pub fn is_idle(&self) -> bool {
        self.finished.is_empty() && self.requeue.is_empty()
    }

    /// Unsettled deliveries (running, buffered, or waiting to be sent).
    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    /// The frames that settle everything due, in the order they must be sent, and forgets those
    /// tags: first the returns, then one `multiple` ack for the finished tags that precede every
    /// unfinished one, then a single ack for each finished tag after a gap.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        for tag in self.requeue.drain(..) {
            self.unsettled.remove(&tag);
            frames.push(Frame::Requeue { tag });
        }
        // The finished prefix of the unsettled tags: a `multiple` settles exactly those.
        let prefix: Vec<u64> = self.unsettled.iter().take_while(|tag| self.finished.contains(tag)).copied().collect();
        if let Some(&last) = prefix.last() {
            frames.push(Frame::Ack { tag: last, multiple: prefix.len() > 1 });
        }
        for tag in &prefix {
            self.unsettled.remove(tag);
            self.finished.remove(tag);
        }
        for tag in std::mem::take(&mut self.finished) {
            self.unsettled.remove(&tag);
            frames.push(Frame::Ack { tag, multiple: false });
        }
        frames
    }
}

struct ChannelState {
    channel: Channel,
    window: Window,
    /// Bumped each time the slot is given to a new channel: a receipt of the slot's previous
    /// channel must never settle a delivery of the new one (tags restart at 1 on every channel).
    generation: u32,
    /// The runtime is done with this channel (the broker closed it): the slot may be reused.
    released: bool,
}

/// The settlement path of one broker connection: one [`Window`] per consumer channel.
pub(crate) struct Acks {
    channels: Mutex<Vec<ChannelState>>,
    /// Wakes the flusher when something is due.
    due: Notify,
    /// Held for a whole flush: frames of one flush go out before those of the next.
    sending: tokio::sync::Mutex<()>,
}

/// Which delivery of which consumer channel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Receipt {
    pub channel: usize,
    generation: u32,
    pub tag: u64,
}

impl Acks {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { channels: Mutex::new(Vec::new()), due: Notify::new(), sending: tokio::sync::Mutex::new(()) })
    }

    /// Adds a consumer channel; returns its index for [`Receipt::channel`]. A released slot is
    /// reused, so a session whose channels the broker keeps closing (`channelPerTask` and
    /// `consumer_timeout`) holds as many slots as it has channels open, not one per re-open.
    pub(crate) fn add_channel(&self, channel: Channel) -> usize {
        let mut channels = self.channels.lock().expect("acks lock");
        if let Some(index) = channels.iter().position(|c| c.released) {
            let slot = &mut channels[index];
            *slot = ChannelState { channel, window: Window::default(), generation: slot.generation.wrapping_add(1), released: false };
            return index;
        }
        channels.push(ChannelState { channel, window: Window::default(), generation: 0, released: false });
        channels.len() - 1
    }

    /// The broker closed channel `index` and took its deliveries back: settling them is moot,
    /// and the slot may go to a new channel. Receipts of the closed channel become stale.
    pub(crate) fn release(&self, index: usize) {
        if let Some(slot) = self.channels.lock().expect("acks lock").get_mut(index) {
            slot.released = true;
            slot.window = Window::default();
        }
    }

    /// True while the receipt's delivery can still be settled: its channel is open and its slot
    /// was not released. A delivery whose channel closed was taken back by the broker, which will
    /// deliver it again: starting it now would run it twice.
    pub(crate) fn is_live(&self, receipt: Receipt) -> bool {
        let channels = self.channels.lock().expect("acks lock");
        channels.get(receipt.channel).is_some_and(|c| c.generation == receipt.generation && !c.released && c.channel.status().connected())
    }

    /// Records a delivery of `channel`; call in arrival order, before anything settles it.
    pub(crate) fn delivered(&self, channel: usize, tag: u64) -> Receipt {
        let mut channels = self.channels.lock().expect("acks lock");
        let slot = &mut channels[channel];
        slot.window.delivered(tag);
        Receipt { channel, generation: slot.generation, tag }
    }

    /// Acknowledges the delivery at the next flush.
    pub(crate) fn ack(&self, receipt: Receipt) {
        if let Some(slot) = Self::current(&mut self.channels.lock().expect("acks lock"), receipt) {
            slot.window.finish(receipt.tag);
        }
        self.due.notify_one();
    }

    /// Returns the delivery to its queue at the next flush.
    pub(crate) fn requeue(&self, receipt: Receipt) {
        if let Some(slot) = Self::current(&mut self.channels.lock().expect("acks lock"), receipt) {
            slot.window.requeue(receipt.tag);
        }
        self.due.notify_one();
    }

    /// The slot of the receipt's own channel; `None` once that channel was released.
    fn current(channels: &mut [ChannelState], receipt: Receipt) -> Option<&mut ChannelState> {
        channels.get_mut(receipt.channel).filter(|c| c.generation == receipt.generation && !c.released)
    }

    /// Flushes whenever something is due, until dropped (the session aborts it). Yields once
    /// before each flush so that the tasks a report confirmation woke together settle together.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            self.due.notified().await;
            tokio::task::yield_now().await;
            self.flush().await;
        }
    }

    /// Sends every due frame now; completes once they are written. A failure is logged: the
    /// channel is then broken and its unsettled deliveries go back to their queues anyway.
    pub(crate) async fn flush(&self) {
        let _turn = self.sending.lock().await;
        let planned: Vec<(Channel, Vec<Frame>)> = {
            let mut channels = self.channels.lock().expect("acks lock");
            channels.iter_mut().filter(|c| !c.window.is_idle()).map(|c| (c.channel.clone(), c.window.take_frames())).collect()
        };
        // join_all polls in order, so each channel's frames are queued in the planned order.
        let sends = planned.iter().flat_map(|(channel, frames)| frames.iter().map(move |frame| send(channel, *frame)));
        for result in futures::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "settling deliveries failed; unsettled ones will be redelivered");
            }
        }
    }
}

async fn send(channel: &Channel, frame: Frame) -> Result<(), lapin::Error> {
    match frame {
        Frame::Ack { tag, multiple } => channel.basic_ack(tag, BasicAckOptions { multiple }).await,
        Frame::Requeue { tag } => channel.basic_nack(tag, BasicNackOptions { multiple: false, requeue: true }).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: std::ops::RangeInclusive<u64>) -> Window {
        let mut w = Window::default();
        for tag in tags {
            w.delivered(tag);
        }
        w
    }

    #[test]
    fn a_finished_prefix_is_one_multiple_ack() {
        let mut w = window(1..=5);
        for tag in [2, 1, 3] {
            w.finish(tag);
        }
        assert_eq!(w.take_frames(), vec![Frame::Ack { tag: 3, multiple: true }]);
        assert_eq!(w.unsettled(), 2);
        assert!(w.is_idle());
        w.finish(5);
        w.finish(4);
        assert_eq!(w.take_frames(), vec![Frame::Ack { tag: 5, multiple: true }]);
        assert_eq!(w.unsettled(), 0);
    }

    #[test]
    fn a_running_task_keeps_later_acks_single_so_the_multiple_never_covers_it() {
        let mut w = window(1..=6);
        for tag in [1, 2, 4, 6] {
            w.finish(tag);
        }
        assert_eq!(
            w.take_frames(),
            vec![Frame::Ack { tag: 2, multiple: true }, Frame::Ack { tag: 4, multiple: false }, Frame::Ack { tag: 6, multiple: false },]
        );
        // 3 and 5 still run; when 3 finishes it is the lowest unsettled tag and goes alone.
        w.finish(3);
        assert_eq!(w.take_frames(), vec![Frame::Ack { tag: 3, multiple: false }]);
        assert_eq!(w.unsettled(), 1);
    }

    #[test]
    fn returns_go_first_and_a_later_multiple_does_not_cover_them() {
        let mut w = window(1..=4);
        w.requeue(2);
        w.finish(1);
        w.finish(3);
        // 2 is returned before the ack of 3 is planned, so a multiple up to 3 is correct and
        // does not acknowledge 2 (already settled by its nack).
        assert_eq!(w.take_frames(), vec![Frame::Requeue { tag: 2 }, Frame::Ack { tag: 3, multiple: true }]);
        assert_eq!(w.unsettled(), 1);
    }

    #[test]
    fn unknown_and_repeated_settlements_send_nothing() {
        let mut w = window(1..=2);
        w.finish(9);
        w.requeue(9);
        assert!(w.take_frames().is_empty());
        w.finish(1);
        w.requeue(1);
        assert_eq!(w.take_frames(), vec![Frame::Ack { tag: 1, multiple: false }]);
        w.finish(1);
        assert!(w.take_frames().is_empty());
        w.requeue(2);
        w.requeue(2);
        assert_eq!(w.take_frames(), vec![Frame::Requeue { tag: 2 }]);
    }
}
