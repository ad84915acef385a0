//! Test harness: real upstream servers on loopback.
