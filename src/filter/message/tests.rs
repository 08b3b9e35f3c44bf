use std::borrow::Cow;
use std::time::{Duration, Instant};

use super::*;

/// A message from LF-separated text, sent with CRLF as the proxy hands it over.
fn crlf(text: &str) -> Message {
    Message::parse(text.replace('\n', "\r\n").into_bytes())
}

fn lf(text: &str) -> Message {
    Message::parse(text.as_bytes().to_vec())
}

fn body(m: &Message) -> &str {
    std::str::from_utf8(m.body()).unwrap_or("<invalid UTF-8>")
}

fn rawbody(m: &Message) -> &str {
    std::str::from_utf8(m.rawbody()).unwrap_or("<invalid UTF-8>")
}

/// Every view, as a rule run would use them.
fn all_views(m: &Message) {
    let _ = m.headers();
    let _ = m.body();
    let _ = m.rawbody();
    let _ = m.uris();
    let _ = m.mime_headers();
    let _ = m.problems();
    for a in m.attachments() {
        let _ = m.part_content(a.part);
    }
    let _ = m.part_content(usize::MAX);
}

fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
        if out.len() % 78 == 76 {
            out.push('\n');
        }
    }
    out
}

#[test]
fn message_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Message>();
}

#[test]
fn headers_raw_and_decoded() {
    let m = crlf(
        "Subject: =?UTF-8?Q?Caf=C3=A9?=\n =?UTF-8?B?IG5vaXI=?= and more\n\
         from:  \"Jane\" <jane@example.org>\n\
         X-Folded: one\n\ttwo  \n  three\n\
         X-Empty:\n\
         \n\
         Body\n",
    );
    let h = m.headers();
    assert_eq!(h.len(), 4);
    assert_eq!(h[0].name, "Subject");
    assert_eq!(
        h[0].raw,
        b" =?UTF-8?Q?Caf=C3=A9?=\r\n =?UTF-8?B?IG5vaXI=?= and more".to_vec()
    );
    assert_eq!(h[0].decoded, "Café noir and more");
    assert_eq!(h[1].name, "from");
    assert_eq!(h[1].raw, b"  \"Jane\" <jane@example.org>".to_vec());
    assert_eq!(h[1].decoded, "\"Jane\" <jane@example.org>");
    assert_eq!(h[2].raw, b" one\r\n\ttwo  \r\n  three".to_vec());
    assert_eq!(h[2].decoded, "one two three");
    assert_eq!(h[3].raw, b"".to_vec());
    assert_eq!(h[3].decoded, "");
    assert_eq!(m.header_fields("FROM").count(), 1);
    assert_eq!(
        m.header_fields("subject").next().map(|f| f.name.as_str()),
        Some("Subject")
    );

    // LF line endings: folding kept as received.
    let m = lf("Subject: a\n b\n\nx\n");
    assert_eq!(m.headers()[0].raw, b" a\n b".to_vec());
    assert_eq!(m.headers()[0].decoded, "a b");
}

#[test]
fn headers_with_invalid_bytes_and_odd_lines() {
    let mut raw = b"From someone@example.org Mon Jan  1 00:00:00 2024\r\n".to_vec();
    raw.extend_from_slice(b"X-Latin: caf\xe9\r\n");
    raw.extend_from_slice(b"X-Bad-Word: =?bogus?Q?caf=E9?= x\r\n");
    raw.extend_from_slice(b"Subject : spaced\r\n");
    raw.extend_from_slice(b"\r\nbody\r\n");
    let m = Message::parse(raw);
    let h = m.headers();
    // The mbox "From " line is not a field.
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[0].raw, b" caf\xe9".to_vec());
    assert_eq!(h[0].decoded, "caf\u{fffd}");
    assert!(h[1].decoded.ends_with(" x"), "{:?}", h[1].decoded);
    assert_eq!(h[2].name, "Subject");
    assert_eq!(h[2].decoded, "spaced");
    assert_eq!(body(&m), "spaced\nbody");
    assert!(m.problems().is_empty(), "{:?}", m.problems());
}

#[test]
fn unfolding_matches_mail_parser() {
    // The fast path (no encoded-words) must agree with mail-parser's unstructured parser.
    use mail_parser::HeaderValue;
    use mail_parser::parsers::MessageStream;
    for raw in [
        &b" plain value"[..],
        b" a\r\n b\r\n\tc",
        b"  lots   of   space  \r\n   \r\n  x",
        b"",
        b" \t ",
        b" caf\xc3\xa9 \xff",
        b" tail\r\n ",
    ] {
        let mut buf = raw.to_vec();
        buf.push(b'\n');
        let theirs = match MessageStream::new(&buf).parse_unstructured() {
            HeaderValue::Text(t) => t.trim().to_string(),
            _ => String::new(),
        };
        assert_eq!(header::decode_value(raw), theirs, "{raw:?}");
    }
}

#[test]
fn missing_header_body_separator() {
    let m = crlf("Subject: s\nThis line is no header\nmore\n");
    assert_eq!(m.headers().len(), 1);
    assert_eq!(body(&m), "s\nThis line is no header more");
    assert!(m.problems().iter().any(|p| p.contains("empty line")));
}

#[test]
fn body_plain() {
    let m = crlf("Subject: Hello there\n\nFirst line\n  second   line\n\n\n \nNext\tpara\n");
    assert_eq!(body(&m), "Hello there\nFirst line second line\nNext para");
    assert_eq!(
        rawbody(&m),
        "First line\n  second   line\n\n\n \nNext\tpara\n"
    );
    assert!(m.problems().is_empty());
    // The Subject is always one line.
    let m = crlf("Subject: =?utf-8?Q?one=0A=0Atwo?=\n\nbody\n");
    assert_eq!(body(&m), "one two\nbody");
    // No subject: no subject line.
    let m = crlf("To: x@example.org\n\nJust text\n");
    assert_eq!(body(&m), "Just text");
}

#[test]
fn body_quoted_printable() {
    let m = crlf(
        "Subject: qp\n\
         Content-Type: text/plain; charset=iso-8859-1\n\
         Content-Transfer-Encoding: quoted-printable\n\
         \n\
         Caf=E9 au lait, soft=\nbreak, =3D sign, =ZZ stays, =c3 lower\n",
    );
    assert_eq!(
        body(&m),
        "qp\nCafé au lait, softbreak, = sign, =ZZ stays, Ã lower"
    );
}

#[test]
fn body_base64_and_charsets() {
    let text = "Grüße aus Köln\nzweite Zeile\n";
    let m = crlf(&format!(
        "Subject: b64\n\
         Content-Type: text/plain; charset=\"utf-8\"\n\
         Content-Transfer-Encoding: base64\n\
         \n\
         {}\n",
        b64(text.as_bytes())
    ));
    assert_eq!(body(&m), "b64\nGrüße aus Köln zweite Zeile");
    assert_eq!(rawbody(&m), "Grüße aus Köln\nzweite Zeile\n");
    assert!(m.problems().is_empty(), "{:?}", m.problems());

    // Windows-1251 via mail-parser's decoders.
    let mut raw = b"Content-Type: text/plain; charset=windows-1251\r\n\r\n".to_vec();
    raw.extend_from_slice(b"\xcf\xf0\xe8\xe2\xe5\xf2\r\n");
    assert_eq!(body(&Message::parse(raw)), "Привет");
}

#[test]
fn eight_bit_without_charset() {
    let mut raw = b"Subject: 8bit\r\n\r\n".to_vec();
    raw.extend_from_slice(b"caf\xe9 \x80 na\xefve\r\n");
    let m = Message::parse(raw);
    assert_eq!(body(&m), "8bit\ncafé € naïve");
    // Valid UTF-8 without a charset is taken as UTF-8, also under a us-ascii label.
    let m = crlf("Content-Type: text/plain; charset=us-ascii\n\nnaïve ✓\n");
    assert_eq!(body(&m), "naïve ✓");
    // A charset declared on the enclosing multipart only.
    let mut raw = b"Content-Type: multipart/mixed; boundary=b; charset=windows-1251\r\n\r\n\
        --b\r\nContent-Type: text/plain\r\n\r\n"
        .to_vec();
    raw.extend_from_slice(b"\xcf\xf0\xe8\xe2\xe5\xf2\r\n--b--\r\n");
    assert_eq!(body(&Message::parse(raw)), "Привет");
    // A declared UTF-8 with invalid bytes is repaired, not reinterpreted.
    let mut raw = b"Content-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
    raw.extend_from_slice(b"ok \xff ok\r\n");
    assert_eq!(body(&Message::parse(raw)), "ok \u{fffd} ok");
}

const HTML: &str = "<html><head><title>Invisible title</title>\
    <style>p { color: red }</style>\
    <script type=\"text/javascript\">var hidden = \"<p>not text</p>\";</script></head>\
    <body><p>Hello&nbsp;<b>World</b> &amp; friends</p><!-- a <p>comment</p> -->\
    <div>Line one<br>line\n  two</div>\
    <p>caf&eacute; &#8364;5 &#x41;&#66;C &lt;tag&gt;</p>\
    <ul><li>one</li><li>two</li></ul>\
    <table><tr><td>cell1</td><td>cell2</td></tr></table>\
    <img src=\"http://img.example.net/x.gif\" alt=\"Buy now\">\
    </body></html>";

#[test]
fn body_html_only() {
    let m = crlf(&format!(
        "Subject: html\nContent-Type: text/html; charset=utf-8\n\n{HTML}\n"
    ));
    assert_eq!(
        body(&m),
        "html\nHello World & friends\nLine one line two\ncafé €5 ABC <tag>\none\ntwo\n\
         cell1 cell2\nBuy now"
    );
    // rawbody keeps the HTML.
    assert!(rawbody(&m).contains("<script type=\"text/javascript\">"));
    assert!(rawbody(&m).contains("<p>Hello&nbsp;<b>World</b>"));
    assert_eq!(m.uris(), ["http://img.example.net/x.gif"]);
}

#[test]
fn multipart_alternative_prefers_plain() {
    let m = crlf(
        "Subject: alt\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/alternative; boundary=\"=_alt\"\n\
         \n\
         This is the preamble.\n\
         --=_alt\n\
         Content-Type: text/plain; charset=us-ascii\n\
         \n\
         Plain version\n\
         --=_alt\n\
         Content-Type: text/html; charset=us-ascii\n\
         \n\
         <p>HTML <a href=\"http://html-only.example.com/\">version</a></p>\n\
         --=_alt--\n\
         epilogue\n",
    );
    assert_eq!(body(&m), "alt\nPlain version");
    assert_eq!(
        rawbody(&m),
        "Plain version\n<p>HTML <a href=\"http://html-only.example.com/\">version</a></p>"
    );
    // URIs come from every alternative.
    assert_eq!(m.uris(), ["http://html-only.example.com/"]);
    assert!(m.problems().is_empty(), "{:?}", m.problems());
    assert_eq!(m.parts().len(), 3);
    assert!(m.attachments().is_empty());

    // Without a plain alternative, the HTML one.
    let m = crlf(
        "Content-Type: multipart/alternative; boundary=b\n\n\
         --b\nContent-Type: text/enriched\n\n<bold>rich</bold>\n\
         --b\nContent-Type: multipart/related; boundary=c\n\n\
         --c\nContent-Type: text/html\n\n<p>From HTML</p>\n\
         --c\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n\
         --c--\n\
         --b--\n",
    );
    assert_eq!(body(&m), "From HTML");
    assert_eq!(m.attachments().len(), 1);
    assert_eq!(m.attachments()[0].sniffed_type, Some("image/png"));
}

#[test]
fn nested_multiparts() {
    let m = lf("Subject: nested\n\
         Content-Type: multipart/mixed; boundary=outer\n\
         \n\
         --outer\n\
         Content-Type: multipart/alternative; boundary=outer-inner\n\
         \n\
         --outer-inner\n\
         Content-Type: text/plain\n\
         \n\
         Alpha\n\
         --outer-inner\n\
         Content-Type: text/html\n\
         \n\
         <b>Beta</b>\n\
         --outer-inner--\n\
         \n\
         --outer\n\
         Content-Type: text/plain\n\
         Content-Disposition: inline\n\
         \n\
         Gamma\n\
         --outer\n\
         Content-Type: message/rfc822\n\
         \n\
         Subject: inner message\n\
         Content-Type: text/plain\n\
         \n\
         Delta\n\
         --outer--\n");
    assert_eq!(body(&m), "nested\nAlpha\nGamma\nDelta");
    assert_eq!(rawbody(&m), "Alpha\n<b>Beta</b>\nGamma\nDelta");
    let parts = m.parts();
    let types: Vec<&str> = parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "text/plain",
            "message/rfc822",
            "text/plain"
        ]
    );
    let parents: Vec<Option<usize>> = parts.iter().map(|p| p.parent).collect();
    assert_eq!(
        parents,
        [None, Some(0), Some(1), Some(1), Some(0), Some(0), Some(5)]
    );
    let depths: Vec<usize> = parts.iter().map(|p| p.depth).collect();
    assert_eq!(depths, [0, 1, 2, 2, 1, 1, 2]);
    assert_eq!(parts[4].disposition.as_deref(), Some("inline"));
    assert!(m.problems().is_empty(), "{:?}", m.problems());
    // The embedded message is one attachment.
    let a = m.attachments();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].declared_type, "message/rfc822");
    assert_eq!(a[0].part, 5);
    assert_eq!(
        m.part_content(6).as_deref(),
        Some(&b"Delta"[..]),
        "the inner text part ends before the delimiter's line ending"
    );
}

#[test]
fn mime_headers() {
    let m = crlf(
        "Subject: top\n\
         Content-Type: multipart/mixed; boundary=\"xx\"\n\
         \n\
         --xx\n\
         Content-Type: text/plain;\n charset=\"utf-8\"\n\
         Content-Transfer-Encoding: 7bit\n\
         \n\
         text\n\
         --xx\n\
         Content-Type: application/octet-stream; name=\"=?UTF-8?Q?r=C3=A9sum=C3=A9.bin?=\"\n\
         X-Part: =?UTF-8?Q?caf=C3=A9?=\n\
         \n\
         data\n\
         --xx--\n",
    );
    let mh = m.mime_headers();
    let names: Vec<&str> = mh.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Content-Type",
            "Content-Transfer-Encoding",
            "Content-Type",
            "X-Part"
        ]
    );
    assert_eq!(mh[0].raw, b" text/plain;\r\n charset=\"utf-8\"".to_vec());
    assert_eq!(mh[0].decoded, "text/plain; charset=\"utf-8\"");
    assert_eq!(mh[3].decoded, "café");
    let parts = m.parts();
    assert_eq!(parts[0].headers, 0..0);
    assert_eq!(parts[1].headers, 0..2);
    assert_eq!(parts[2].headers, 2..4);
    assert_eq!(parts[1].charset.as_deref(), Some("utf-8"));
    assert_eq!(parts[1].transfer_encoding, "7bit");
    assert_eq!(parts[2].filename.as_deref(), Some("résumé.bin"));
    assert_eq!(m.headers().len(), 2);
}

#[test]
fn uris_from_text_and_html() {
    let m = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n\
         --b\n\
         Content-Type: text/plain\n\
         \n\
         Visit http://example.com/a?b=1&c=2, or (https://secure.example.org/path).\n\
         Also www.spam.test/offer and WWW.Caps.Test, mail me@example.org or\n\
         mailto:sales@example.net. Not: file:///etc/passwd, javascript:alert(1).\n\
         Again http://example.com/a?b=1&c=2\n\
         --b\n\
         Content-Type: text/html\n\
         \n\
         <a href=\"http&#58;//evil.example/&amp;x\">click</a>\
         <A HREF = 'https://single.example/q'>s</A>\
         <img SRC=cid:part1@example>\
         <form action=\"/relative/post\"></form>\
         <a href=\"  http://spaced.example/\n  next  \">sp</a>\
         <a href=\"\">empty</a>\
         <p>text link http://in-html-text.example/ here</p>\n\
         --b--\n",
    );
    assert_eq!(
        m.uris(),
        [
            "http://example.com/a?b=1&c=2",
            "https://secure.example.org/path",
            "http://www.spam.test/offer",
            "http://WWW.Caps.Test",
            "mailto:me@example.org",
            "mailto:sales@example.net",
            "http://evil.example/&x",
            "https://single.example/q",
            "cid:part1@example",
            "/relative/post",
            "http://spaced.example/  next",
            "http://in-html-text.example/",
        ]
    );
}

#[test]
fn attachments_sniffed_and_declared() {
    let mut exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff".to_vec();
    exe.extend(std::iter::repeat_n(0x41u8, 300));
    let pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n".to_vec();
    let m = crlf(&format!(
        "Subject: invoice\n\
         Content-Type: multipart/mixed; boundary=\"--=_mixed\"\n\
         \n\
         ----=_mixed\n\
         Content-Type: text/plain\n\
         \n\
         See attached.\n\
         ----=_mixed\n\
         Content-Type: application/pdf; name=\"invoice.pdf\"\n\
         Content-Transfer-Encoding: base64\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\n\
         \n\
         {}\n\
         ----=_mixed\n\
         Content-Type: APPLICATION/PDF\n\
         Content-Transfer-Encoding: base64\n\
         \n\
         {}\n\
         ----=_mixed\n\
         Content-Type: text/plain; name=\"notes.txt\"\n\
         Content-Disposition: attachment; filename*=UTF-8''n%C3%B6tes.txt\n\
         \n\
         plain notes\n\
         ----=_mixed--\n",
        b64(&exe),
        b64(&pdf)
    ));
    let a = m.attachments();
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(a[0].filename.as_deref(), Some("invoice.pdf"));
    assert_eq!(a[0].declared_type, "application/pdf");
    assert_eq!(a[0].sniffed_type, Some("application/x-msdownload"));
    assert_eq!(a[0].size, exe.len());
    assert_eq!(a[0].part, 2);
    assert_eq!(m.part_content(2).as_deref(), Some(&exe[..]));
    assert!(matches!(m.part_content(2), Some(Cow::Owned(_))));
    assert_eq!(a[1].filename, None);
    assert_eq!(a[1].declared_type, "application/pdf");
    assert_eq!(a[1].sniffed_type, Some("application/pdf"));
    assert_eq!(a[1].size, pdf.len());
    assert_eq!(a[2].filename.as_deref(), Some("nötes.txt"));
    assert_eq!(a[2].declared_type, "text/plain");
    assert_eq!(a[2].sniffed_type, None);
    assert!(matches!(
        m.part_content(4),
        Some(Cow::Borrowed(b"plain notes"))
    ));
    // Text attachments are text (SpamAssassin renders every text part).
    assert_eq!(body(&m), "invoice\nSee attached.\nplain notes");
    assert!(m.problems().is_empty(), "{:?}", m.problems());
}

#[test]
fn sniffing() {
    for (magic, ty) in [
        (&b"MZ\x90\x00"[..], "application/x-msdownload"),
        (b"PK\x03\x04\x14\x00", "application/zip"),
        (b"%PDF-1.7", "application/pdf"),
        (b"\x7fELF\x02\x01", "application/x-elf"),
        (b"\x1f\x8b\x08\x00", "application/gzip"),
        (b"Rar!\x1a\x07\x00", "application/x-rar"),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", "application/x-7z-compressed"),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
            "application/x-ole-storage",
        ),
        (b"\x89PNG\r\n\x1a\n\x00", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"{\\rtf1\\ansi", "application/rtf"),
    ] {
        assert_eq!(sniff::sniff(magic), Some(ty));
    }
    assert_eq!(sniff::sniff(b"Hello"), None);
    assert_eq!(sniff::sniff(b""), None);

    // A "text" part that is an executable is an attachment, not text.
    let m = crlf(&format!(
        "Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n{}\n",
        b64(b"MZ\x90\x00 this is not text")
    ));
    assert_eq!(body(&m), "");
    assert_eq!(
        m.attachments().len(),
        0,
        "text/plain without a name is not listed"
    );
    assert_eq!(m.parts().len(), 1);
}

#[test]
fn broken_multipart_without_boundary() {
    let m = crlf(
        "Subject: nb\nContent-Type: multipart/mixed\n\n--x\nContent-Type: text/plain\n\nhi\n--x--\n",
    );
    assert!(
        m.problems()
            .iter()
            .any(|p| p.contains("without a boundary parameter")),
        "{:?}",
        m.problems()
    );
    // The body is taken as text.
    assert!(body(&m).contains("hi"));
    all_views(&m);

    let m = crlf("Content-Type: multipart/mixed; boundary=nope\n\n--other\n\nhi\n");
    assert!(
        m.problems().iter().any(|p| p.contains("never found")),
        "{:?}",
        m.problems()
    );
    assert_eq!(body(&m), "--other\nhi");
}

#[test]
fn broken_missing_closing_boundary() {
    let m = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n\
         --b\nContent-Type: text/plain\n\none\n\
         --b\nContent-Type: text/plain\n\ntwo, and then the message was cut",
    );
    assert_eq!(m.problems(), ["part 0: missing closing boundary \"--b--\""]);
    assert_eq!(body(&m), "one\ntwo, and then the message was cut");
    // A delimiter must start a line and stand alone on it.
    let m = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n\
         --b\n\ntext --b inside a line\n--bx is not it either\n--b--\n",
    );
    assert!(m.problems().is_empty(), "{:?}", m.problems());
    assert_eq!(body(&m), "text --b inside a line --bx is not it either");
}

#[test]
fn broken_base64() {
    let full = b64(b"Hello, this is a complete sentence.");
    let cut = &full[..full.len() - 7];
    let m = crlf(&format!(
        "Content-Type: multipart/mixed; boundary=b\n\n\
         --b\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n{cut}\n\
         --b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n\
         !!!!@@@@####{full}\n\
         --b\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n{full}.\n\
         --b--\n"
    ));
    let problems = m.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("part 1: base64 ends in the middle")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "part 2: base64 has 12 characters outside its alphabet"),
        "{problems:?}"
    );
    assert_eq!(
        problems.len(),
        2,
        "one stray character is tolerated: {problems:?}"
    );
    // What could be decoded is still there.
    assert!(
        body(&m).starts_with("Hello, this is a complete"),
        "{}",
        body(&m)
    );
    all_views(&m);
}

#[test]
fn broken_deep_multipart_nesting() {
    let depth = 5000;
    let mut text = String::new();
    for i in 0..depth {
        text.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n"
        ));
    }
    text.push_str("Content-Type: text/plain\n\nthe bottom\n");
    for i in (0..depth).rev() {
        text.push_str(&format!("--b{i}--\n"));
    }
    let started = Instant::now();
    let m = crlf(&text);
    all_views(&m);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(m.parts().len(), MAX_DEPTH + 1);
    assert_eq!(m.parts().iter().map(|p| p.depth).max(), Some(MAX_DEPTH));
    assert!(
        m.problems()
            .iter()
            .any(|p| p.contains("nesting deeper than 20")),
        "{:?}",
        m.problems()
    );
}

#[test]
fn broken_deep_message_nesting() {
    let depth = 5000;
    let mut text = String::new();
    for _ in 0..depth {
        text.push_str("Subject: fwd\nContent-Type: message/rfc822\n\n");
    }
    text.push_str("Subject: bottom\n\nthe bottom\n");
    let started = Instant::now();
    let m = crlf(&text);
    all_views(&m);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(m.parts().len(), MAX_DEPTH + 1);
    assert!(m.problems().iter().any(|p| p.contains("nesting deeper")));

    // Base64-encoded embedded messages are decoded and parsed too.
    let inner = "Subject: inner\r\nContent-Type: text/plain\r\n\r\nsecret words\r\n";
    let m = crlf(&format!(
        "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n{}\n",
        b64(inner.as_bytes())
    ));
    assert_eq!(body(&m), "secret words");
    assert_eq!(m.mime_headers()[0].decoded, "inner");
}

#[test]
fn broken_too_many_parts() {
    let mut text = String::from("Content-Type: multipart/mixed; boundary=b\n\n");
    for i in 0..10_000 {
        text.push_str(&format!("--b\nContent-Type: text/plain\n\npart {i}\n"));
    }
    text.push_str("--b--\n");
    let started = Instant::now();
    let m = crlf(&text);
    all_views(&m);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(m.parts().len(), MAX_PARTS);
    assert!(
        m.problems()
            .iter()
            .any(|p| p.contains("more than 1000 MIME parts"))
    );
    assert!(body(&m).ends_with(&format!("part {}", MAX_PARTS - 2)));

    // Many multiparts whose boundaries never appear: linear, not quadratic.
    let mut text = String::from("Content-Type: multipart/mixed; boundary=b\n\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "--b\nContent-Type: multipart/mixed; boundary=zz{i}\n\npart {i}\n"
        ));
    }
    text.push_str("--b--\n");
    let started = Instant::now();
    let m = crlf(&text);
    all_views(&m);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(m.problems().iter().any(|p| p.contains("never found")));
}

#[test]
fn broken_odd_inputs_do_not_panic() {
    for raw in [
        &b""[..],
        b"\r\n",
        b"\n\n\n",
        b"no header at all",
        b"Subject: only a header",
        b"Subject: x\r\n\r\n",
        b" leading continuation\r\n\r\nbody",
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n--b\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n====",
        b"Content-Type: text/html\r\n\r\n<a href='",
        b"Content-Type: text/html\r\n\r\n<",
        b"Content-Type: text/html\r\n\r\n&#x110000;&#99999999999;&#;&",
        b"Content-Type: text/plain; charset=\xff\xfe\r\n\r\n\xff\xfe",
        b"Content-Type: ((((((\r\n\r\nx",
        b"Content-Type: text/plain; name*0*=utf-8''%; name*1=\"\r\n\r\nx",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n= \r",
        b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n",
        b"\xff\xfe\x00\x00:\x00",
    ] {
        let m = Message::parse(raw.to_vec());
        all_views(&m);
    }
    let m = Message::parse(b"Content-Transfer-Encoding: x-uuencode\r\n\r\nx".to_vec());
    assert!(m.problems()[0].contains("unknown Content-Transfer-Encoding"));
}

/// Deterministic mutations of a few messages: every view on every mutant, no panic.
#[test]
fn mutated_messages_do_not_panic() {
    let seeds = [
        format!("Subject: s\nContent-Type: text/html\n\n{HTML}\n"),
        "Subject: =?utf-8?B?w6k=?=\nContent-Type: multipart/alternative; boundary=b\n\n\
         --b\nContent-Type: text/plain; charset=iso-8859-1\n\
         Content-Transfer-Encoding: quoted-printable\n\nCaf=E9 http://x.example/\n\
         --b\nContent-Type: message/rfc822\n\nSubject: in\n\nhi www.a.example\n\
         --b\nContent-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\n\
         JVBERi0xLjQK\n--b--\n"
            .to_string(),
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let specials = b"<>&;=-:\r\n\"'/ \t?#%\x00\xff";
    for seed in &seeds {
        let seed = seed.replace('\n', "\r\n").into_bytes();
        for _ in 0..400 {
            let mut m = seed.clone();
            for _ in 0..(next() % 8 + 1) {
                if m.is_empty() {
                    break;
                }
                let at = (next() as usize) % m.len();
                match next() % 4 {
                    0 => m[at] = specials[(next() as usize) % specials.len()],
                    1 => {
                        m.remove(at);
                    }
                    2 => m.truncate(at),
                    _ => {
                        let len = (next() as usize) % 64;
                        let from = (next() as usize) % m.len();
                        let piece: Vec<u8> = m[from..(from + len).min(m.len())].to_vec();
                        m.splice(at..at, piece);
                    }
                }
            }
            all_views(&Message::parse(m));
        }
    }
}

#[test]
fn big_message_is_bounded() {
    // ~25 MB: a huge HTML part and a huge base64 attachment.
    let mut text = String::from(
        "Subject: big\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\n\n",
    );
    let chunk = "<p>word <a href=\"http://x.example/\">link</a> &amp; more</p>\n";
    while text.len() < 12 << 20 {
        text.push_str(chunk);
    }
    text.push_str(
        "--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n",
    );
    let blob = vec![0x5au8; 9 << 20];
    text.push_str(&b64(&blob));
    text.push_str("\n--b--\n");
    let m = crlf(&text);
    all_views(&m);
    assert!(m.body().len() <= MAX_VIEW_BYTES);
    assert!(m.body().len() > MAX_VIEW_BYTES - 100);
    assert!(m.rawbody().len() <= MAX_VIEW_BYTES);
    assert_eq!(m.uris(), ["http://x.example/"]);
    assert_eq!(m.attachments()[0].size, blob.len());
    assert!(m.problems().is_empty(), "{:?}", m.problems());
}

#[test]
fn part_content() {
    let m = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n\
         --b\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\na=3Db\n\
         --b\nContent-Type: text/plain\n\nplain\n--b--\n",
    );
    assert_eq!(m.part_content(1).as_deref(), Some(&b"a=b"[..]));
    assert!(matches!(m.part_content(2), Some(Cow::Borrowed(b"plain"))));
    assert!(m.part_content(3).is_none());
}

/// Every message of the corpus (`scripts/fetch-corpus.sh`) through every view: no panic, and
/// the throughput. `cargo test --release --lib corpus -- --ignored --nocapture`
#[test]
#[ignore = "needs target/corpus: run scripts/fetch-corpus.sh first"]
fn corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/corpus");
    let mut files = Vec::new();
    for folder in ["spam-1", "easy-ham-1"] {
        let dir = root.join(folder);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-corpus.sh", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "txt") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert_eq!(
        files.len(),
        3000,
        "expected spam-1 (500) and easy-ham-1 (2,500)"
    );
    let messages: Vec<(std::path::PathBuf, Vec<u8>)> = files
        .into_iter()
        .map(|p| {
            let raw = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, raw)
        })
        .collect();
    let bytes: usize = messages.iter().map(|(_, m)| m.len()).sum();

    // Three rounds; per message the fastest of its three times (the others are noise:
    // scheduling, page faults).
    let mut best = vec![Duration::MAX; messages.len()];
    let mut rounds = Vec::new();
    let (mut with_problems, mut with_attachments, mut uris, mut html) = (0, 0, 0, 0);
    for round in 0..3 {
        let started = Instant::now();
        for (i, (path, raw)) in messages.iter().enumerate() {
            let t = Instant::now();
            let m = Message::parse(raw.clone());
            all_views(&m);
            best[i] = best[i].min(t.elapsed());
            assert!(!m.headers().is_empty(), "{}: no headers", path.display());
            if round == 0 {
                with_problems += usize::from(!m.problems().is_empty());
                with_attachments += usize::from(!m.attachments().is_empty());
                uris += m.uris().len();
                html += usize::from(m.parts().iter().any(|p| p.content_type == "text/html"));
            }
        }
        rounds.push(started.elapsed());
    }
    let elapsed = rounds.iter().copied().min().unwrap_or_default();
    println!(
        "corpus: {} messages, {:.1} MB, parse + all views (best of 3 rounds) in {:?}: \
         {:.0} msgs/s, {:.1} MB/s",
        messages.len(),
        bytes as f64 / 1e6,
        elapsed,
        messages.len() as f64 / elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    if let Some((i, took)) = best.iter().enumerate().max_by_key(|&(_, t)| *t) {
        println!(
            "slowest: {:?} {} ({} bytes)",
            took,
            messages[i].0.display(),
            messages[i].1.len()
        );
    }
    println!(
        "{with_problems} with MIME problems, {with_attachments} with attachments, \
         {html} with HTML, {uris} URIs"
    );

    // The structure alone (what every non-header view pays once).
    let started = Instant::now();
    for (_, raw) in &messages {
        let m = Message::parse(raw.clone());
        let _ = m.parts();
    }
    println!("structure only: {:?}", started.elapsed());
    let started = Instant::now();
    for (_, raw) in &messages {
        let m = Message::parse(raw.clone());
        let _ = m.headers();
    }
    println!("headers only: {:?}", started.elapsed());
}
