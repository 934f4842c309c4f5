//! funcscale worker: the worker runtime, the beat, the handlers and the producer/admin CLI. The
//! queue protocol they speak is the `funcscale_protocol` crate.

pub mod beat;
pub mod cli;
pub mod clock;
pub mod handler;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod records;
pub mod worker;
