//! `rules_parse`: see `mailwarden::fuzzing::check_rules_parse` (the same check replays
//! `fuzz/regressions/rules_parse/` in tests/fuzz_regressions.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailwarden::fuzzing::check_rules_parse(data));
