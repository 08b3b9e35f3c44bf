//! The `Received:` header mailwarden adds for its own hop (RFC 5321 §4.4, RFC 5322 §3.6.7).
//!
//! The from clause is `from <HELO> (<TCP-info>)`, where TCP-info is the verified (FCrDNS)
//! client name and the address literal, or the literal alone when no name is verified
//! (RFC 5321 §4.4: `TCP-info = address-literal / ( Domain FWS address-literal )`) — the form
//! Postfix writes, e.g. `from mx.example (mail.example.net [192.0.2.7])`.
//!
//! Every value in it comes from the session after validation (HELO is one printable word,
//! addresses cannot hold CR, LF, spaces or angle brackets, names are checked host names), so
//! nothing a client sends can split or inject a header here.

use crate::envelope::Envelope;

/// Builds the header field, folded, without the final CRLF.
pub fn received_header(envelope: &Envelope, hostname: &str, date: &str) -> String {
    let client = &envelope.client;
    let helo = client.helo.as_deref().unwrap_or("unknown");
    let tcp_info = match &client.name {
        Some(name) => format!("{name} {}", client.address_literal()),
        None => client.address_literal(),
    };
    let mut header = format!(
        "Received: from {helo} ({tcp_info})\r\n\tby {hostname} (mailwarden) with {} id {}",
        client.protocol(envelope.mail_from.params.smtputf8),
        envelope.id,
    );
    if let Some(version) = &client.tls {
        header.push_str(&format!("\r\n\t(using {version})"));
    }
    // Like Postfix, name the recipient only when there is exactly one.
    if let [only] = envelope.recipients.as_slice() {
        header.push_str(&format!("\r\n\tfor <{}>", only.address));
    }
    header.push_str(&format!("; {date}"));
    header
}

/// The current time in RFC 5322 §3.3 form, in local time.
pub fn now_rfc5322() -> String {
    chrono::Local::now()
        .format("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope::example("4A1B2C3D4E5F", rcpts)
    }

    #[test]
    fn one_recipient_is_named() {
        let h = received_header(
            &envelope(&["u@example.org"]),
            "mx.example.test",
            "Thu, 26 Nov 2026 11:00:00 +0000",
        );
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.7])\r\n\tby mx.example.test (mailwarden) with ESMTP id 4A1B2C3D4E5F\r\n\tfor <u@example.org>; Thu, 26 Nov 2026 11:00:00 +0000"
        );
    }

    #[test]
    fn a_verified_name_goes_before_the_address_an_unverified_one_nowhere() {
        let mut e = envelope(&["u@example.org"]);
        e.client.name = Some("mail.example.net".into());
        e.client.reverse_name = Some("mail.example.net".into());
        let h = received_header(&e, "mx", "D");
        assert!(
            h.starts_with("Received: from client.example (mail.example.net [192.0.2.7])\r\n"),
            "{h}"
        );
        e.client.name = None;
        let h = received_header(&e, "mx", "D");
        assert!(
            h.starts_with("Received: from client.example ([192.0.2.7])\r\n"),
            "{h}"
        );
    }

    #[test]
    fn several_recipients_are_not() {
        let h = received_header(&envelope(&["a@x.org", "b@x.org"]), "mx", "D");
        assert!(!h.contains("for <"), "{h}");
    }

    #[test]
    fn date_has_rfc5322_shape() {
        let d = now_rfc5322();
        let parts: Vec<&str> = d.split(' ').collect();
        assert_eq!(parts.len(), 6, "{d}");
        assert!(parts[0].ends_with(','), "{d}");
    }
}
