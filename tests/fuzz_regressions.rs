//! Replays every saved fuzz input in `fuzz/regressions/<target>/` through the same check the
//! cargo-fuzz target runs (`mailwarden::fuzzing`): crashes the fuzzers found (fixed since),
//! slow inputs, and hand-made edge cases. `scripts/fuzz.sh` says how to add one.

use std::path::Path;

use mailwarden::fuzzing;

#[test]
fn every_saved_fuzz_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for target in fuzzing::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "{} holds no inputs: keep at least the hand-made cases",
            dir.display()
        );
        for file in files {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| fuzzing::check(target, &data));
            match outcome {
                Ok(known) => assert!(known, "unknown fuzz target {target}"),
                Err(_) => panic!(
                    "{} fails its {target} check (message above)",
                    file.display()
                ),
            }
        }
    }
}

#[test]
fn the_reference_decoder_agrees_with_the_rfc_examples() {
    use mailwarden::config::BareNewline;
    let r = fuzzing::reference_decode(
        b"..x\r\n.\r\nQUIT\r\n",
        true,
        BareNewline::Reject,
        1000,
        1000,
    );
    assert_eq!(r.end, Some(8));
    assert_eq!(r.result, Ok(b".x\r\n".to_vec()));
    let r = fuzzing::reference_decode(b"a\n.\nb", true, BareNewline::Normalize, 1000, 1000);
    assert_eq!(r.end, None);
    assert_eq!(r.result, Ok(b"a\r\n.\r\nb\r\n".to_vec()));
}
