//! Tenant runtimes: where a tenant's control plane processes run.

pub mod cgroup;
pub mod pods;
pub mod processes;
pub mod start_gate;
