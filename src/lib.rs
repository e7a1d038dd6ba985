//! miochat: a real-time chat server and terminal client on a hand-rolled
//! `mio` event loop.

pub mod protocol;
pub mod bench;
