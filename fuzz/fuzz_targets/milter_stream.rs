//! `milter_stream`: see `mailwarden::fuzzing::check_milter_stream` (the same check replays
//! `fuzz/regressions/milter_stream/` in tests/fuzz_regressions.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailwarden::fuzzing::check_milter_stream(data));
