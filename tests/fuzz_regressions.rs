//! Inputs that made a fuzz target (see `docs/fuzzing.md`) fail, kept as
//! ordinary tests so that `cargo test` guards the fix. Each test names the
//! target and the artifact; the raw artifact is also among the target's
//! seeds (`fuzz/seeds/TARGET/`), so the fuzzer replays it on every run.

use std::collections::VecDeque;
use std::time::Instant;

use miochat::evloop::config::LoopConfig;
use miochat::evloop::connection::{Connection, Input};
use miochat::evloop::inbound::ReadBuffer;
use miochat::evloop::testing::{client_frame, FakeSocket, UPGRADE};

/// A masked ping frame with `payload`, as a client sends it.
fn ping(payload: &[u8]) -> Vec<u8> {
    client_frame(0x9, payload)
}

/// Upgrades, then reads pings while the socket takes nothing, until the
/// connection gives up on the client; then lets everything out.
fn never_reading_client(config: &LoopConfig, pings: usize) -> Vec<u8> {
    let now = Instant::now();
    let mut input = VecDeque::from([UPGRADE.to_vec()]);
    input.extend((0..pings).map(|_| ping(&[b'p'; 100])));
    let socket = FakeSocket {
        input,
        ..FakeSocket::default()
    };
    let peer = "127.0.0.1:9".parse().unwrap();
    let mut conn = Connection::new(socket, peer, 1, now);
    let mut buffer = ReadBuffer::default();
    assert!(matches!(
        conn.poll_input(now, config, &mut buffer),
        Input::Opened
    ));
    loop {
        match conn.poll_input(now, config, &mut buffer) {
            Input::Control => {}
            Input::Finished => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!conn.phase().is_open(), "closed as too slow");
    conn.socket_mut().room = usize::MAX;
    conn.flush(&[]);
    std::mem::take(&mut conn.socket_mut().written)
}

/// `connection` target, `crash-103459e5c940d85b5863e3a0bd1eeca7a7c83131`:
/// a queue bound (128 bytes) smaller than the `101` response. The client
/// sent a frame before reading anything, the connection found its queue
/// over the bound and dropped everything not yet started, the `101`
/// included, so the client's first bytes were a close frame, not HTTP.
#[test]
fn a_bound_below_the_101_response_still_sends_it_first() {
    let config = LoopConfig {
        max_outbound_bytes: 128,
        ..LoopConfig::default()
    };
    let written = never_reading_client(&config, 1);
    assert!(
        written.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
        "the stream starts with {:?}",
        String::from_utf8_lossy(&written[..written.len().min(40)])
    );
    let head_end = written.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    // Then the close frame: 1013, "too slow to keep up".
    assert_eq!(&written[head_end..head_end + 4], &[0x88, 21, 0x03, 0xf5]);
}

/// The same bug with an ordinary bound: a client that floods pings and
/// never reads fills its queue with pongs behind the unsent `101`. The
/// pongs are dropped when it is closed as too slow; the `101` must not be.
#[test]
fn a_ping_flood_before_reading_the_101_keeps_it() {
    let config = LoopConfig {
        max_outbound_bytes: 1000,
        ..LoopConfig::default()
    };
    let written = never_reading_client(&config, 50);
    assert!(written.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    let head_end = written.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&written[head_end..head_end + 4], &[0x88, 21, 0x03, 0xf5]);
}
