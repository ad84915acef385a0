//! The hostplane controller: turns ControlPlane objects into running tenant control planes.
//!
//! One reconcile pass runs fetch → validate → build → provision → apply → status; each step is
//! a module with its own error type, mapped to a condition reason and an Event.

pub mod build;
pub mod config;
pub mod download;
pub mod embedded;
pub mod hibernation;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod pki;
pub mod provision;
pub mod quota;
pub mod reconcile;
pub mod runtime;
pub mod status;
pub mod upstream;
pub mod usage;
pub mod validate;
