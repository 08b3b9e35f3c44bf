//! Header changes as operations: what the verdict wants done to a message's header block,
//! in a form every front end can carry out.
//!
//! The proxy rewrites the bytes it relays ([`apply`]); the milter sends the same operations
//! to the MTA as `SMFIR_INSHEADER`, `SMFIR_CHGHEADER` (an empty value deletes) and
//! `SMFIR_ADDHEADER` packets, which is what Sendmail's libmilter (`smfi_insheader`,
//! `smfi_chgheader`, `smfi_addheader`) and Postfix's `cleanup` understand. So the operations
//! follow their semantics: a field is named by its name and its occurrence among the fields
//! of that name (1-based, case-insensitive), an insert by its position (0 = top).
//!
//! [`plan`] turns the filter's intent ([`HeaderEdits`]: remove these names, add these fields
//! on top, prefix the subject) into operations against the message as received: first the
//! deletions and changes, highest occurrence first (so earlier occurrences keep their
//! numbers whatever the receiver does with deleted fields), then the inserts at the top in
//! order, then appends. Unchanged fields are never touched, byte for byte.

use super::headers::HeaderEdits;

/// One change to the header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Insert the field `name:value` at position `index` (0 = before the first field).
    Insert {
        index: usize,
        name: String,
        value: String,
    },
    /// Replace the value of the `nth` (1-based) field called `name`.
    Change {
        name: String,
        nth: usize,
        value: String,
    },
    /// Remove the `nth` (1-based) field called `name`, with its continuation lines.
    Delete { name: String, nth: usize },
    /// Add the field at the end of the header block.
    Append { name: String, value: String },
}

// Values are the text after the colon exactly as written: a leading space when there is one,
// continuation lines joined with CRLF + whitespace (RFC 5322 §2.2.3 folding).

/// One header field of a message: its name and its raw bytes (all lines, line endings kept).
struct Field<'a> {
    name: String,
    raw: &'a [u8],
}

/// Splits a message into its header fields and the rest (the empty line and the body, or
/// nothing). Lines before the first field that are not fields (a stray continuation) are
/// kept as nameless fields, so nothing is lost.
fn fields(message: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut out: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        let line_end = memchr::memchr(b'\n', rest).map_or(rest.len(), |n| n + 1);
        let line = &rest[..line_end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            return (out, rest);
        }
        let continuation = content[0] == b' ' || content[0] == b'\t';
        match out.last_mut() {
            Some(last) if continuation => {
                let start = pos - last.raw.len();
                last.raw = &message[start..pos + line_end];
            }
            _ => {
                let name = content
                    .iter()
                    .position(|&b| b == b':')
                    .map(|colon| {
                        String::from_utf8_lossy(&content[..colon])
                            .trim()
                            .to_string()
                    })
                    .unwrap_or_default();
                out.push(Field { name, raw: line });
            }
        }
        pos += line_end;
    }
    (out, &message[message.len()..])
}

/// The value of a raw field: everything after the first colon, without the final line end.
fn raw_value(raw: &[u8]) -> &[u8] {
    let colon = raw
        .iter()
        .position(|&b| b == b':')
        .map_or(raw.len(), |c| c + 1);
    let value = &raw[colon.min(raw.len())..];
    let value = value.strip_suffix(b"\n").unwrap_or(value);
    value.strip_suffix(b"\r").unwrap_or(value)
}

/// Splits `Name: value` (as the filter writes its fields) into name and value (the value
/// keeps its leading space).
fn split_field(field: &str) -> (String, String) {
    match field.split_once(':') {
        Some((name, value)) => (name.trim().to_string(), value.to_string()),
        None => (field.trim().to_string(), String::new()),
    }
}

/// An insert of a complete field (`Name: value`, folded with CRLF) at `index`.
pub fn insert_field(index: usize, field: &str) -> HeaderOp {
    let (name, value) = split_field(field);
    HeaderOp::Insert { index, name, value }
}

/// The operations that carry out `edits` on `message` (its header block as received).
pub fn plan(message: &[u8], edits: &HeaderEdits) -> Vec<HeaderOp> {
    let (fields, _) = fields(message);
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut changes: Vec<HeaderOp> = Vec::new();
    let mut subject_done = edits.subject_prefix.is_none();
    for field in fields.iter().filter(|f| !f.name.is_empty()) {
        let key = field.name.to_ascii_lowercase();
        let nth = {
            let n = seen.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let value = raw_value(field.raw);
        let remove = edits
            .remove
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&field.name))
            || edits.remove_auth_results_for.as_deref().is_some_and(|id| {
                key == "authentication-results"
                    && super::auth::claims_authserv_id(&String::from_utf8_lossy(value), id)
            });
        if remove {
            changes.push(HeaderOp::Delete {
                name: field.name.clone(),
                nth,
            });
        } else if !subject_done
            && key == "subject"
            && let Some(prefix) = &edits.subject_prefix
        {
            subject_done = true;
            let skip = value
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            let text = String::from_utf8_lossy(&value[skip..]);
            if !text.starts_with(prefix.as_str()) {
                changes.push(HeaderOp::Change {
                    name: field.name.clone(),
                    nth,
                    value: format!(" {prefix}{text}"),
                });
            }
        }
    }
    // Highest occurrence first: the earlier ones keep their numbers.
    changes.reverse();
    let mut ops = changes;
    for (index, field) in edits.add.iter().enumerate() {
        let (name, value) = split_field(field);
        ops.push(HeaderOp::Insert { index, name, value });
    }
    if !subject_done && let Some(prefix) = &edits.subject_prefix {
        ops.push(HeaderOp::Append {
            name: "Subject".into(),
            value: format!(" {}", prefix.trim_end()),
        });
    }
    ops
}

/// A field's raw bytes from a name and a value as the operations carry them.
fn field_bytes(name: &str, value: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(name.len() + value.len() + 3);
    raw.extend_from_slice(name.as_bytes());
    raw.push(b':');
    raw.extend_from_slice(value.as_bytes());
    raw.extend_from_slice(b"\r\n");
    raw
}

/// Carries out `ops`, in order, on `message` and returns the new message. An operation that
/// names a field the message does not have changes nothing (as in the MTA).
pub fn apply(message: &[u8], ops: &[HeaderOp]) -> Vec<u8> {
    let (fields, rest) = fields(message);
    let mut out: Vec<(String, std::borrow::Cow<'_, [u8]>)> = fields
        .into_iter()
        .map(|f| (f.name, std::borrow::Cow::Borrowed(f.raw)))
        .collect();
    let position = |out: &[(String, std::borrow::Cow<'_, [u8]>)], name: &str, nth: usize| {
        out.iter()
            .enumerate()
            .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
            .nth(nth.checked_sub(1)?)
            .map(|(i, _)| i)
    };
    for op in ops {
        match op {
            HeaderOp::Insert { index, name, value } => {
                let at = (*index).min(out.len());
                out.insert(at, (name.clone(), field_bytes(name, value).into()));
            }
            HeaderOp::Change { name, nth, value } => {
                if let Some(i) = position(&out, name, *nth) {
                    out[i].1 = field_bytes(&out[i].0, value).into();
                }
            }
            HeaderOp::Delete { name, nth } => {
                if let Some(i) = position(&out, name, *nth) {
                    out.remove(i);
                }
            }
            HeaderOp::Append { name, value } => {
                out.push((name.clone(), field_bytes(name, value).into()));
            }
        }
    }
    let mut bytes = Vec::with_capacity(message.len() + 512);
    for (i, (_, raw)) in out.iter().enumerate() {
        bytes.extend_from_slice(raw);
        // A field without a line end (the last of a message that is all header) gets one
        // when another field follows it.
        if !raw.ends_with(b"\n") && i + 1 < out.len() {
            bytes.extend_from_slice(b"\r\n");
        }
    }
    bytes.extend_from_slice(rest);
    bytes
}

#[cfg(test)]
mod tests {
    use super::super::headers::tests::edits;
    use super::*;

    #[test]
    fn plan_names_occurrences_highest_first_then_inserts_on_top() {
        let msg = b"X-Spam-Flag: NO\r\nFrom: a@b\r\nX-Spam-Flag: NO\r\nSubject: hi\r\n\r\nbody\r\n";
        let ops = plan(
            msg,
            &edits(
                &["x-spam-flag"],
                &["X-Spam-Flag: YES", "X-A: 1"],
                Some("[SPAM] "),
            ),
        );
        assert_eq!(
            ops,
            vec![
                HeaderOp::Change {
                    name: "Subject".into(),
                    nth: 1,
                    value: " [SPAM] hi".into()
                },
                HeaderOp::Delete {
                    name: "X-Spam-Flag".into(),
                    nth: 2
                },
                HeaderOp::Delete {
                    name: "X-Spam-Flag".into(),
                    nth: 1
                },
                HeaderOp::Insert {
                    index: 0,
                    name: "X-Spam-Flag".into(),
                    value: " YES".into()
                },
                HeaderOp::Insert {
                    index: 1,
                    name: "X-A".into(),
                    value: " 1".into()
                },
            ]
        );
        assert_eq!(
            apply(msg, &ops),
            b"X-Spam-Flag: YES\r\nX-A: 1\r\nFrom: a@b\r\nSubject: [SPAM] hi\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn unchanged_fields_keep_their_bytes_and_missing_targets_change_nothing() {
        let msg = b"From:  a@b\r\n\tcontinued\nSubject:x\r\n\r\nbody";
        let ops = vec![HeaderOp::Delete {
            name: "Received".into(),
            nth: 1,
        }];
        assert_eq!(apply(msg, &ops), msg.to_vec());
    }

    #[test]
    fn change_keeps_the_fields_own_name_spelling() {
        let msg = b"SUBJECT: hi\r\n\r\n";
        let ops = plan(msg, &edits(&[], &[], Some("[SPAM] ")));
        assert_eq!(apply(msg, &ops), b"SUBJECT: [SPAM] hi\r\n\r\n");
    }
}
