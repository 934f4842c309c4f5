//! funcscale worker: the queue protocol shared with the operator, the worker runtime and the beat.

pub mod beat;
pub mod cli;
pub mod cron;
pub mod handler;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod records;
pub mod worker;
