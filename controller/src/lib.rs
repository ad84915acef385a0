//! The hostplane controller: turns ControlPlane objects into running tenant control planes.

pub mod pki;
