//! Descriptors that arrived with the bytes of a Unix socket, waiting for the line they came
//! with, then given to its call or refused.
//!
//! A sender sends each frame that carries descriptors as one message of its own, with the
//! descriptors attached to its first bytes. A read on Linux stops after such a message, so
//! the descriptors a read brings belong to the line holding the last byte of that read. The
//! reader notes where that byte lies in its buffer; the decoded line that covers it gets them.
//! Whatever no call takes is closed: descriptors with a line that is not a call, with a call
//! that claims none, past the limit, or with bytes that were discarded.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use crate::codec::Decoded;
use crate::error::{code, RpcError};
use crate::frame::{Frame, InvalidFrame};

/// Descriptors read with bytes not decoded yet.
#[derive(Default)]
pub(super) struct ArrivedFds {
    sets: VecDeque<Set>,
    /// Descriptors held in `sets`.
    held: usize,
}

/// What one read brought.
struct Set {
    /// Where the last byte of that read lies in the reader's buffer.
    at: usize,
    fds: Vec<OwnedFd>,
    /// How many arrived, including those closed at once because they were too many.
    count: usize,
}

/// The descriptors of one line, for [`ArrivedFds::attach`].
pub(super) struct ForLine {
    fds: Vec<OwnedFd>,
    count: usize,
}

impl ArrivedFds {
    pub(super) fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// A read brought `fds` with bytes whose last one is at `at` in the buffer. Past `limit`
    /// waiting at once they are closed now, and only counted, so a peer cannot make this
    /// side hold more than `limit` descriptors for lines it never finishes.
    pub(super) fn arrived(&mut self, at: usize, fds: Vec<OwnedFd>, limit: usize) {
        let count = fds.len();
        let fds = if self.held + count > limit {
            Vec::new()
        } else {
            self.held += count;
            fds
        };
        self.sets.push_back(Set { at, fds, count });
    }

    /// The first `consumed` bytes of the buffer were decoded (into one line, or skipped):
    /// the descriptors that came with them, if any. The rest now lie `consumed` bytes
    /// earlier.
    pub(super) fn consumed(&mut self, consumed: usize) -> Option<ForLine> {
        let mut line: Option<ForLine> = None;
        while let Some(set) = self.sets.front() {
            if set.at >= consumed {
                break;
            }
            let set = self.sets.pop_front().expect("looked at");
            self.held -= set.fds.len();
            let line = line.get_or_insert_with(|| ForLine {
                fds: Vec::new(),
                count: 0,
            });
            line.fds.extend(set.fds);
            line.count += set.count;
        }
        for set in &mut self.sets {
            set.at -= consumed;
        }
        line
    }
}

impl ForLine {
    /// Gives the descriptors to `item`'s arguments, or refuses them: a call is then answered
    /// with an error (-32602), a notification reported as an error, and every descriptor is
    /// closed. `None`: the descriptors came with something that was not a call (a reply, a
    /// bad line, skipped bytes); they are closed, and the reason is returned for a warning.
    pub(super) fn attach(self, item: Decoded, limit: usize) -> (Decoded, Option<String>) {
        let count = self.count;
        let (method, args, id, meta) = match item {
            Ok(Frame::Notification { method, args }) => (method, args, None, None),
            Ok(Frame::Request {
                method,
                args,
                id,
                meta,
            }) => (method, args, Some(id), Some(meta)),
            other => {
                let why = format!(
                    "{count} descriptors arrived with a line that is not a call or notification; closed"
                );
                return (other, Some(why));
            }
        };
        let refused = if limit == 0 {
            Some(format!(
                "{count} descriptors arrived with `{method}`; this connection takes none"
            ))
        } else if count > limit || self.fds.len() < count {
            Some(format!(
                "{count} descriptors arrived with `{method}`; the limit is {limit} per frame"
            ))
        } else if !args.get().contains("\"$fd\"") {
            Some(format!(
                "{count} descriptors arrived with `{method}`, whose arguments claim none"
            ))
        } else {
            None
        };
        // Closed here when refused.
        let fds = self.fds;
        match refused {
            Some(why) => {
                let error = RpcError::new(code::INVALID_PARAMS, why);
                (Err(InvalidFrame::new(id, error)), None)
            }
            None => {
                let args = args.with_fds(fds);
                let frame = match (id, meta) {
                    (Some(id), Some(meta)) => Frame::Request {
                        method,
                        args,
                        id,
                        meta,
                    },
                    _ => Frame::Notification { method, args },
                };
                (Ok(frame), None)
            }
        }
    }

    /// The descriptors came with bytes that decoded to nothing (skipped or discarded): the
    /// reason, for a warning; they are closed when `self` drops.
    pub(super) fn unclaimed(self) -> String {
        format!(
            "{} descriptors arrived with bytes that held no frame; closed",
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Args;

    fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect()
    }

    #[test]
    fn descriptors_go_to_the_line_holding_the_last_byte_of_their_read() {
        let mut arrived = ArrivedFds::default();
        // Two lines of 10 bytes read before, the line with descriptors ends at 29.
        arrived.arrived(29, fds(2), 16);
        assert!(arrived.consumed(10).is_none());
        assert!(arrived.consumed(10).is_none());
        let line = arrived.consumed(10).expect("the third line's");
        assert_eq!((line.fds.len(), line.count), (2, 2));
        assert!(arrived.is_empty());
    }

    #[test]
    fn past_the_limit_descriptors_are_closed_at_once_and_the_frame_refused() {
        let mut arrived = ArrivedFds::default();
        arrived.arrived(5, fds(3), 2);
        assert_eq!(arrived.held, 0);
        let line = arrived.consumed(6).unwrap();
        let frame = Frame::Request {
            method: "m".into(),
            args: Args::new(&(1,)).unwrap(),
            id: 7,
            meta: Default::default(),
        };
        let (item, warning) = line.attach(Ok(frame), 2);
        let refused = item.unwrap_err();
        assert_eq!(
            (refused.id, refused.error.code),
            (Some(7), code::INVALID_PARAMS)
        );
        assert!(refused.error.message.contains("limit is 2"), "{refused}");
        assert!(warning.is_none());
    }

    #[test]
    fn a_call_that_claims_none_or_a_reply_is_refused() {
        let line = ForLine {
            fds: fds(1),
            count: 1,
        };
        let call = Frame::Notification {
            method: "m".into(),
            args: Args::new(&(1,)).unwrap(),
        };
        let (item, _) = line.attach(Ok(call), 16);
        assert!(item.unwrap_err().error.message.contains("claim none"));
        let line = ForLine {
            fds: fds(1),
            count: 1,
        };
        let reply = Frame::Reply {
            id: 1,
            result: Ok(crate::Response::null()),
        };
        let (item, warning) = line.attach(Ok(reply), 16);
        assert!(item.is_ok() && warning.is_some());
    }
}
