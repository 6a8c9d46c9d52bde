//! A hostile peer sending descriptors: every refusal happens, with a clear error, and the
//! server's process holds no descriptor more afterwards than before. Linux only: it counts
//! the entries of `/proc/self/fd`. One test in a binary of its own, so no other test opens
//! descriptors in this process while it counts.
#![cfg(target_os = "linux")]

mod support;

use std::future::IntoFuture;
use std::io::{BufRead, BufReader, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use diarrhoea::{code, Config, Fd, Router, UnixListener};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde_json::Value;
use support::{eventually, temp_dir};

/// Frames with descriptors per round: each refusal once, and one accepted call.
const ROUNDS: usize = 500;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A peer that writes raw lines, with descriptors when asked, and reads replies.
struct Hostile {
    socket: UnixStream,
    replies: BufReader<UnixStream>,
}

impl Hostile {
    fn connect(path: &Path) -> Self {
        let socket = UnixStream::connect(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let replies = BufReader::new(socket.try_clone().unwrap());
        Hostile { socket, replies }
    }

    /// Sends `line` as one message with `count` fresh descriptors (closed here after).
    fn send(&self, line: &str, count: usize) {
        let fds: Vec<OwnedFd> = (0..count)
            .map(|_| std::fs::File::open("/dev/null").unwrap().into())
            .collect();
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(32))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if count > 0 {
            assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        }
        let sent = rustix::net::sendmsg(
            &self.socket,
            &[IoSlice::new(line.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        assert_eq!(sent, line.len());
    }

    /// The next reply: `(id, result, error)`.
    fn reply(&mut self) -> (u64, Value, Option<Value>) {
        let mut line = String::new();
        self.replies
            .read_line(&mut line)
            .expect("a reply within 5 s");
        let frame: Vec<Value> = serde_json::from_str(&line).unwrap();
        (
            frame[0].as_u64().unwrap(),
            frame[1].clone(),
            frame.get(2).cloned(),
        )
    }

    /// The next reply is the error `code` for call `id`, whose message holds `text`.
    fn refused(&mut self, id: u64, code: i64, text: &str) {
        let (got, _, error) = self.reply();
        let error = error.unwrap_or_else(|| panic!("call {id} was not refused"));
        assert_eq!((got, error["code"].as_i64()), (id, Some(code)), "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(text), "{message} (wanted {text:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_descriptor_is_closed_and_the_count_stays_flat() {
    let dir = temp_dir();
    let router = || {
        Router::new()
            .route("count", |_a: Fd, b: Option<Fd>| async move {
                1 + usize::from(b.is_some())
            })
            .route("nothing", |_x: u32| async move {})
    };
    let path = dir.path().join("fd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(diarrhoea::serve(listener, router()).into_future());
    // A server that takes no descriptors at all.
    let closed_path = dir.path().join("none.sock");
    let listener = UnixListener::bind(&closed_path).unwrap();
    let serve_none =
        diarrhoea::serve(listener, router()).config(Config::new().max_fds_per_frame(0));
    tokio::spawn(serve_none.into_future());

    let run = move |rounds: usize| {
        let path = path.clone();
        let closed_path = closed_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut peer = Hostile::connect(&path);
            let mut none = Hostile::connect(&closed_path);
            for _ in 0..rounds {
                // Claims two, one arrived.
                peer.send("[\"count\",[{\"$fd\":0},{\"$fd\":1}],1]\n", 1);
                peer.refused(
                    1,
                    code::INVALID_PARAMS,
                    "claims descriptor 1, but 1 arrived",
                );
                // Descriptors no frame claims: a call whose arguments claim none, a reply,
                // an empty line.
                peer.send("[\"nothing\",[1],2]\n", 2);
                peer.refused(2, code::INVALID_PARAMS, "claim none");
                peer.send("[99,null]\n", 1);
                peer.send("\n", 1);
                // More than the limit (16).
                peer.send("[\"count\",[{\"$fd\":0}],3]\n", 17);
                peer.refused(3, code::INVALID_PARAMS, "the limit is 16");
                // A notification that claims one that did not arrive.
                peer.send("[\"count\",[{\"$fd\":4}]]\n", 1);
                // Accepted: the handler takes it, and drops it.
                peer.send("[\"count\",[{\"$fd\":0},null],4]\n", 1);
                let (id, result, error) = peer.reply();
                assert_eq!((id, result, error), (4, Value::from(1), None));
                // A receiver that does not expect descriptors.
                none.send("[\"count\",[{\"$fd\":0}],5]\n", 1);
                none.refused(5, code::INVALID_PARAMS, "takes none");
            }
        })
    };

    // One round first: whatever the server sets up once (tasks, buffers) is in the baseline.
    tokio::time::timeout(Duration::from_secs(10), run(1))
        .await
        .expect("a round within 10 s")
        .unwrap();
    // Its two connections close on the server's side too.
    let mut before = open_fds();
    eventually(Duration::from_secs(5), || {
        let settled = open_fds() == before;
        before = open_fds();
        async move { settled }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = open_fds();
    tokio::time::timeout(Duration::from_secs(60), run(ROUNDS))
        .await
        .expect("the rounds within 60 s")
        .unwrap();
    // The two connections of the last run close, and the notification's handler ends.
    let flat = eventually(Duration::from_secs(5), || async { open_fds() <= before }).await;
    assert!(
        flat,
        "{} descriptors open after {} frames with descriptors, {before} before",
        open_fds(),
        ROUNDS * 8
    );
}
