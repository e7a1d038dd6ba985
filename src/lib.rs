//! miochat: a real-time chat server and terminal client on a hand-rolled
//! `mio` event loop.
//!
//! `ARCHITECTURE.md` is the map and `docs/event-loop.md` walks through the
//! loop step by step; this is the short version.
//!
//! # Layout
//!
//! The folders of `src/` are the architecture:
//!
//! - [`evloop`]: the generic event loop. One thread, one `mio::Poll`, a
//!   slab of connections, WebSocket framing, timers and the write path.
//!   It serves any [`evloop::service::Service`] and knows nothing of chat.
//! - [`chat`]: the chat on that loop: the room as pure logic
//!   ([`chat::room`]), the service that puts it behind the loop
//!   ([`chat::service`]) and the plain-text mode for raw clients.
//! - [`proto`]: the wire, shared by the server and every client: the JSON
//!   messages, the typed commands, the rate limit.
//! - `client`: the terminal client, `lineclient` (feature `client`).
//! - `bench`: the load generator, `chatbench` (feature `bench`).
//!
//! The library built with `--no-default-features` is the loop, the chat
//! and the wire alone; each program's feature adds that program's crates.

#[cfg(feature = "bench")]
pub mod bench;
pub mod chat;
#[cfg(feature = "client")]
pub mod client;
pub mod evloop;
pub mod proto;

pub use chat::config::ServerConfig;
pub use evloop::handle::ServerHandle;
