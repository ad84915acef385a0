//! Arbitrary bytes into the ClientHello parser: it must never panic, every decision
//! must stand when more bytes arrive, and a full buffer must always be decided.
//!
//! From proxy/: `cargo +nightly fuzz run parse_client_hello fuzz/corpus/parse_client_hello
//! tests/vectors -- -max_len=20000` (the captured hellos seed the corpus).
#![no_main]

use hostplane_proxy::client_hello::{MAX_CLIENT_HELLO_BYTES, Parsed, parse_client_hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = parse_client_hello(data);
    if data.len() >= MAX_CLIENT_HELLO_BYTES {
        assert_ne!(full, Ok(Parsed::NeedMore));
    }
    if let Parsed::Found(name) = full.as_ref().unwrap_or(&Parsed::NeedMore) {
        assert!(!name.as_str().is_empty() && name.as_str().len() <= 253);
    }
    // The first byte of input picks a prefix length to check finality on.
    let cut = usize::from(data.first().copied().unwrap_or(0)) * data.len() / 256;
    let early = parse_client_hello(&data[..cut]);
    if early != Ok(Parsed::NeedMore) {
        assert_eq!(early, full);
    }
});
