//! The wire: the JSON messages every client and the server exchange, the
//! typed commands a person writes and the requests they make, how text
//! from the network is shown safely, and the rate limit both sides keep
//! to. Pure: no I/O, no clock, no logging.

pub mod command;
pub mod display;
pub mod protocol;
pub mod rate_limit;
