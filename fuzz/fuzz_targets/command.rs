//! `command`: see `mailwarden::fuzzing::check_command` (the same check replays
//! `fuzz/regressions/command/` in tests/fuzz_regressions.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailwarden::fuzzing::check_command(data));
