//! The chat on the event loop: the room as pure logic, the service that
//! puts it behind the loop, and the plain-text mode for raw clients.

pub mod config;
pub mod plain;
pub mod room;
pub mod service;

pub use service::{start, Chat};
