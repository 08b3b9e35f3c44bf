//! `message_scan`: see `mailwarden::fuzzing::check_message_scan` (the same check replays
//! `fuzz/regressions/message_scan/` in tests/fuzz_regressions.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailwarden::fuzzing::check_message_scan(data));
