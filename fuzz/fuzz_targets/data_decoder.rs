//! `data_decoder`: see `mailwarden::fuzzing::check_data_decoder` (the same check replays
//! `fuzz/regressions/data_decoder/` in tests/fuzz_regressions.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailwarden::fuzzing::check_data_decoder(data));
