//! Decoding message data from DATA (dot-terminated) and BDAT (counted chunks).
//!
//! This is the SMTP-smuggling boundary, so it is written out byte by byte and kept apart from
//! everything else:
//! - DATA ends **only** at `<CR><LF>.<CR><LF>` (RFC 5321 §4.1.1.4), where the first CRLF may be
//!   the one that ended the DATA command. `<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`,
//!   `<CR>.<CR>`, `<CR><LF>.<CR><CR><LF>` and friends are message content, never an end.
//! - Leading dots are removed as RFC 5321 §4.5.2 says; the output is the unstuffed message.
//! - A bare LF or bare CR anywhere is recorded. Under `reject` the message is refused (the
//!   session answers as soon as the client pauses, see `Connection::read_data`); under
//!   `normalize` each one becomes CRLF. Either way the output uses
//!   CRLF only, so what the upstream receives is canonical and the upstream cannot disagree with
//!   us about where a message ends.
//! - Size and line-length limits are tracked while decoding; an oversized message stops being
//!   stored (bounded memory) but is still read to its end so the session stays in sync.

use memchr::memchr2;

use crate::config::BareNewline;

/// Why a decoded message cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A bare LF or CR was seen and the policy is `reject`; the text names which.
    BareNewline(&'static str),
    /// More than the configured maximum message size.
    TooBig,
    /// A text line longer than the configured maximum.
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line of input; `clean` when the previous line ended in a real CRLF.
    LineStart { clean: bool },
    /// A `.` at the start of a line (DATA only).
    Dot { clean: bool },
    /// `.` CR at the start of a line (DATA only).
    DotCr { clean: bool },
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR.
    Cr,
}

/// Incremental decoder for one message.
#[derive(Debug)]
pub struct DataDecoder {
    dot_framing: bool,
    policy: BareNewline,
    max_size: usize,
    max_line: usize,
    state: State,
    line_len: usize,
    out: Vec<u8>,
    bare: Option<&'static str>,
    too_big: bool,
    long_line: bool,
}

impl DataDecoder {
    /// A decoder for DATA: dot-stuffed, ends at CRLF.CRLF.
    pub fn dot(policy: BareNewline, max_size: usize, max_line: usize) -> DataDecoder {
        DataDecoder::new(true, policy, max_size, max_line)
    }

    /// A decoder for BDAT chunks: raw bytes, the end is given by `BDAT n LAST`.
    pub fn chunks(policy: BareNewline, max_size: usize, max_line: usize) -> DataDecoder {
        DataDecoder::new(false, policy, max_size, max_line)
    }

    fn new(dot_framing: bool, policy: BareNewline, max_size: usize, max_line: usize) -> Self {
        DataDecoder {
            dot_framing,
            policy,
            max_size,
            max_line,
            state: State::LineStart { clean: true },
            line_len: 0,
            out: Vec::new(),
            bare: None,
            too_big: false,
            long_line: false,
        }
    }

    /// Bytes of decoded message so far (0 once the size limit was passed).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Whether the message has already passed the size limit.
    pub fn over_size_limit(&self) -> bool {
        self.too_big
    }

    /// Whether a bare LF/CR was seen (whatever the policy).
    pub fn saw_bare_newline(&self) -> bool {
        self.bare.is_some()
    }

    /// Whether the message is refused already, whatever follows (a bare newline under
    /// `reject`): the session need not wait for the end of data to say so.
    pub fn refused(&self) -> bool {
        self.bare.is_some() && self.policy == BareNewline::Reject
    }

    /// Decodes `input`. For DATA, returns `Some(n)` when the end-of-data line was reached
    /// after consuming `n` bytes (the rest of `input` belongs to the next command); `None`
    /// when all of `input` was consumed. For BDAT it always consumes everything.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Text => {
                    // Fast path: copy the run of ordinary bytes up to the next CR or LF.
                    match memchr2(b'\r', b'\n', &input[i..]) {
                        Some(0) => {
                            if b == b'\r' {
                                self.state = State::Cr;
                            } else {
                                self.bare_newline("<LF>");
                            }
                            i += 1;
                        }
                        Some(n) => {
                            self.push(&input[i..i + n]);
                            i += n;
                        }
                        None => {
                            self.push(&input[i..]);
                            i = input.len();
                        }
                    }
                }
                State::LineStart { clean } => {
                    if self.dot_framing && b == b'.' {
                        self.state = State::Dot { clean };
                        i += 1;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Dot { clean } => match b {
                    b'\r' => {
                        self.state = State::DotCr { clean };
                        i += 1;
                    }
                    b'\n' => {
                        // "." then a bare LF: a line holding one dot, not an end.
                        self.push(b".");
                        self.bare_newline("<LF>");
                        i += 1;
                    }
                    _ => {
                        // RFC 5321 §4.5.2: drop the first of the leading dots.
                        self.state = State::Text;
                    }
                },
                State::DotCr { clean } => {
                    if b == b'\n' {
                        i += 1;
                        if clean {
                            self.state = State::LineStart { clean: true };
                            return Some(i);
                        }
                        // <LF>.<CR><LF>: the dot line did not follow a real CRLF; content.
                        self.push(b".");
                        self.newline();
                    } else {
                        // ".<CR>x": a line holding one dot, ended by a bare CR; like ".<LF>"
                        // it is content, and a line of one dot is not unstuffed (§4.5.2).
                        self.push(b".");
                        self.bare_newline("<CR>");
                    }
                }
                State::Cr => {
                    if b == b'\n' {
                        self.newline();
                        i += 1;
                    } else {
                        // The pending CR was bare; `b` starts the next line.
                        self.bare_newline("<CR>");
                    }
                }
            }
        }
        None
    }

    /// Ends the message and returns it (canonical CRLF, ending in CRLF unless empty), or why
    /// it cannot be accepted. For BDAT, call after the LAST chunk.
    pub fn finish(mut self) -> Result<Vec<u8>, Problem> {
        match self.state {
            State::Cr | State::DotCr { .. } => {
                if matches!(self.state, State::DotCr { .. }) {
                    // A stuffed dot before a final bare CR: nothing else on the line.
                    self.push(b".");
                }
                self.bare_newline("<CR>");
            }
            State::Dot { .. } => {
                self.push(b".");
                self.newline();
            }
            State::Text => self.newline(),
            State::LineStart { .. } => {}
        }
        if let Some(kind) = self.bare
            && self.policy == BareNewline::Reject
        {
            return Err(Problem::BareNewline(kind));
        }
        if self.too_big {
            return Err(Problem::TooBig);
        }
        if self.long_line {
            return Err(Problem::LineTooLong);
        }
        Ok(self.out)
    }

    fn push(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        if self.line_len + 2 > self.max_line {
            self.long_line = true;
        }
        if self.too_big {
            return;
        }
        if self.out.len() + bytes.len() > self.max_size {
            self.too_big = true;
            self.out = Vec::new();
            return;
        }
        self.out.extend_from_slice(bytes);
    }

    /// CRLF ends the line; it does not count towards the line's length beyond the 2 octets
    /// the limit already allows for.
    fn push_line_end(&mut self) {
        self.line_len = 0;
        if !self.too_big && self.out.len() + 2 > self.max_size {
            self.too_big = true;
            self.out = Vec::new();
        }
        if !self.too_big {
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn newline(&mut self) {
        self.push_line_end();
        self.state = State::LineStart { clean: true };
    }

    fn bare_newline(&mut self, kind: &'static str) {
        self.bare.get_or_insert(kind);
        self.push_line_end();
        self.state = State::LineStart { clean: false };
    }
}

/// Dot-stuffs a canonical (CRLF) message for sending with DATA and appends the end-of-data
/// line (RFC 5321 §4.5.2). `message` must be empty or end with CRLF.
pub fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut rest = message;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(n) => {
                out.extend_from_slice(&rest[..=n]);
                rest = &rest[n + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                at_line_start = false;
            }
        }
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    /// Feeds `input` (optionally one byte at a time) to a DATA decoder.
    fn decode(
        policy: BareNewline,
        input: &[u8],
        bytewise: bool,
    ) -> (Option<usize>, Result<Vec<u8>, Problem>) {
        let mut d = DataDecoder::dot(policy, BIG, 1000);
        let mut end = None;
        if bytewise {
            for (i, b) in input.iter().enumerate() {
                if d.feed(std::slice::from_ref(b)).is_some() {
                    end = Some(i + 1);
                    break;
                }
            }
        } else {
            end = d.feed(input);
        }
        (end, d.finish())
    }

    fn both(policy: BareNewline, input: &[u8]) -> (Option<usize>, Result<Vec<u8>, Problem>) {
        let whole = decode(policy, input, false);
        assert_eq!(
            whole,
            decode(policy, input, true),
            "chunking changed the result for {input:?}"
        );
        whole
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (end, msg) = both(BareNewline::Reject, input);
        assert_eq!(end, Some(input.len() - 6));
        assert_eq!(msg.expect("ok"), b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn empty_message() {
        let (end, msg) = both(BareNewline::Reject, b".\r\n");
        assert_eq!(end, Some(3));
        assert_eq!(msg.expect("ok"), b"");
    }

    #[test]
    fn leading_dots_are_unstuffed() {
        let (_, msg) = both(BareNewline::Reject, b"..\r\n...x\r\n.y\r\na.b\r\n.\r\n");
        assert_eq!(msg.expect("ok"), b".\r\n..x\r\ny\r\na.b\r\n");
    }

    /// The smuggling inputs from the public scanners: none of them may end the message.
    const SMUGGLING: [&[u8]; 6] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r\n.\r\r\n",
        b"\r.\r\n",
    ];

    #[test]
    fn smuggling_sequences_never_end_data() {
        for seq in SMUGGLING {
            let mut input = b"text".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<evil@example.test>\r\nDATA\r\nsmuggled\r\n.\r\n");
            for policy in [BareNewline::Reject, BareNewline::Normalize] {
                let (end, msg) = both(policy, &input);
                assert_eq!(end, Some(input.len()), "{seq:?} ended data early");
                match policy {
                    BareNewline::Reject => {
                        assert!(matches!(msg, Err(Problem::BareNewline(_))), "{seq:?}")
                    }
                    BareNewline::Normalize => {
                        let msg = msg.expect("normalized");
                        assert!(is_canonical(&msg), "{seq:?} gave {msg:?}");
                        let text = String::from_utf8_lossy(&msg);
                        assert!(text.contains("smuggled"), "{seq:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn lf_dot_crlf_is_a_dot_line_in_normalize_mode() {
        let (end, msg) = both(BareNewline::Normalize, b"a\n.\r\nb\r\n.\r\n");
        assert_eq!(end, Some(11));
        let msg = msg.expect("ok");
        assert_eq!(msg, b"a\r\n.\r\nb\r\n");
        // Sent upstream, the dot line is stuffed again, so the upstream sees content too.
        let mut wire = Vec::new();
        dot_stuff(&msg, &mut wire);
        assert_eq!(wire, b"a\r\n..\r\nb\r\n.\r\n");
    }

    #[test]
    fn bare_lf_names_itself_in_reject_mode() {
        let (_, msg) = both(BareNewline::Reject, b"a\nb\r\n.\r\n");
        assert_eq!(msg, Err(Problem::BareNewline("<LF>")));
        let (_, msg) = both(BareNewline::Reject, b"a\rb\r\n.\r\n");
        assert_eq!(msg, Err(Problem::BareNewline("<CR>")));
    }

    #[test]
    fn normalize_turns_bare_cr_and_lf_into_crlf() {
        let (_, msg) = both(BareNewline::Normalize, b"a\nb\rc\r\r\nd\r\n.\r\n");
        assert_eq!(msg.expect("ok"), b"a\r\nb\r\nc\r\n\r\nd\r\n");
    }

    /// Found by the data_decoder fuzz target (fuzz/regressions/data_decoder/dot-bare-cr-line):
    /// `.<CR>` dropped its dot, so the line became empty while `.<LF>` kept it.
    #[test]
    fn dot_line_ended_by_bare_cr_keeps_its_dot() {
        let (end, msg) = both(BareNewline::Normalize, b"a\r.\rb\r\n.\r\r\nc\r\n.\r\n");
        assert_eq!(end, Some(17), "ends only at the last line");
        assert_eq!(msg.expect("ok"), b"a\r\n.\r\nb\r\n.\r\n\r\nc\r\n");
        let (_, msg) = both(BareNewline::Normalize, b"a\n.\nb\r\n.\r\n");
        assert_eq!(msg.expect("ok"), b"a\r\n.\r\nb\r\n");
    }

    #[test]
    fn size_limit_keeps_reading_to_the_end() {
        let mut d = DataDecoder::dot(BareNewline::Reject, 10, 1000);
        let input = b"0123456789abcdef\r\nmore\r\n.\r\nNOOP\r\n";
        assert_eq!(d.feed(input), Some(input.len() - 6));
        assert_eq!(d.len(), 0, "oversized message is not kept in memory");
        assert_eq!(d.finish(), Err(Problem::TooBig));
    }

    #[test]
    fn line_limit_counts_crlf() {
        let mut ok_line = vec![b'x'; 998];
        ok_line.extend_from_slice(b"\r\n.\r\n");
        let mut d = DataDecoder::dot(BareNewline::Reject, BIG, 1000);
        assert!(d.feed(&ok_line).is_some());
        assert!(d.finish().is_ok());
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let mut d = DataDecoder::dot(BareNewline::Reject, BIG, 1000);
        assert!(d.feed(&long).is_some());
        assert_eq!(d.finish(), Err(Problem::LineTooLong));
    }

    #[test]
    fn bdat_chunks_keep_dots_and_join_crlf_across_chunks() {
        let mut d = DataDecoder::chunks(BareNewline::Reject, BIG, 1000);
        assert_eq!(d.feed(b".\r\nline\r"), None);
        assert_eq!(d.feed(b"\n.\r\nend"), None);
        assert_eq!(d.finish().expect("ok"), b".\r\nline\r\n.\r\nend\r\n");
    }

    #[test]
    fn bdat_trailing_bare_cr_is_bare() {
        let mut d = DataDecoder::chunks(BareNewline::Reject, BIG, 1000);
        d.feed(b"x\r");
        assert_eq!(d.finish(), Err(Problem::BareNewline("<CR>")));
    }

    #[test]
    fn dot_stuff_roundtrip() {
        let msg = b".\r\n..a\r\nb.\r\n";
        let mut wire = Vec::new();
        dot_stuff(msg, &mut wire);
        assert_eq!(wire, b"..\r\n...a\r\nb.\r\n.\r\n");
        let (_, back) = both(BareNewline::Reject, &wire);
        assert_eq!(back.expect("ok"), msg);
    }

    fn is_canonical(msg: &[u8]) -> bool {
        msg.iter().enumerate().all(|(i, &b)| match b {
            b'\r' => msg.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && msg[i - 1] == b'\r',
            _ => true,
        })
    }

    /// A tiny deterministic generator, so the property test needs no extra crate.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// Property: on random input made of the risky bytes, the decoder ends exactly where a
    /// plain search for CRLF.CRLF (or a leading .CRLF) says, and normalized output is canonical
    /// and survives dot-stuffing + decoding unchanged.
    #[test]
    fn random_inputs_agree_with_reference_boundary() {
        let alphabet = [b'\r', b'\n', b'.', b'a', b'\r', b'\n', b'.'];
        let mut seed = 42;
        for _ in 0..20_000 {
            let len = (lcg(&mut seed) % 24) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(lcg(&mut seed) % alphabet.len() as u64) as usize])
                .collect();
            let reference = if input.starts_with(b".\r\n") {
                Some(3)
            } else {
                input
                    .windows(5)
                    .position(|w| w == b"\r\n.\r\n")
                    .map(|p| p + 5)
            };
            let (end, msg) = both(BareNewline::Normalize, &input);
            assert_eq!(end, reference, "boundary for {input:?}");
            let msg = msg.expect("normalize accepts");
            assert!(is_canonical(&msg), "{input:?} -> {msg:?}");
            let mut wire = Vec::new();
            dot_stuff(&msg, &mut wire);
            let (end2, again) = both(BareNewline::Reject, &wire);
            assert_eq!(end2, Some(wire.len()));
            assert_eq!(
                again.expect("canonical"),
                msg,
                "stuffing round trip for {input:?}"
            );
        }
    }
}
