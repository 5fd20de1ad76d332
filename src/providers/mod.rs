//! Sources of desired state. A provider publishes complete [`DesiredState`] snapshots on a
//! `watch` channel; it never publishes a state it could not read completely, so a broken
//! source leaves the last good state (and table) in place. [`start`] runs the providers an
//! instance is configured with and follows them as one ([`Providers`]).
//!
//! [`DesiredState`]: crate::config::DesiredState

pub mod controller;
pub mod docker;
pub mod file;
mod start;

pub use start::{notify_on_change, start, ProviderConfig, Providers};
