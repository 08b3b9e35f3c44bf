//! The type of content from its first bytes ("magic numbers").

/// How many decoded bytes `sniff` needs at most.
pub(super) const SNIFF_LEN: usize = 16;

const SIGNATURES: &[(&[u8], &str)] = &[
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x7fELF", "application/x-elf"),
    (b"\x1f\x8b", "application/gzip"),
    (b"Rar!", "application/x-rar"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"\xd0\xcf\x11\xe0", "application/x-ole-storage"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"{\\rtf", "application/rtf"),
    // Last: two bytes only, checked once nothing longer matched.
    (b"MZ", "application/x-msdownload"),
];

/// The type `content` starts like, if it is one we recognise.
pub(super) fn sniff(content: &[u8]) -> Option<&'static str> {
    SIGNATURES
        .iter()
        .find(|(magic, _)| content.starts_with(magic))
        .map(|&(_, ty)| ty)
}

/// Whether a part declared as text is really one of the binary formats above (then its
/// "text" is left out of body, rawbody and URIs; it is still an attachment).
pub(super) fn is_binary(sniffed: Option<&str>) -> bool {
    sniffed.is_some_and(|t| t != "application/rtf")
}
