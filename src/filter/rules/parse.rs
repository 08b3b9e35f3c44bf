//! The `.cf` reader: SpamAssassin's configuration syntax, as far as rules are concerned.
//!
//! Reading is one pass over the lines of every file, in order; later definitions replace
//! earlier ones. `if`/`ifplugin`/`else`/`endif` sections that are false are read only for
//! their nesting. Everything that is not ours to run (eval tests, network and plugin
//! directives, settings) is recorded with its file and line and a short reason.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Diagnostic;
use super::perl::{self, Delimited};

/// The SpamAssassin version `if (version ...)` compares with.
pub const SA_VERSION: f64 = 4.000001;
/// The Perl version `if (perl_version ...)` compares with.
const PERL_VERSION: f64 = 5.036;

/// Plugins whose directives mailwarden implements itself.
pub const BUILTIN_PLUGINS: [&str; 2] = ["ReplaceTags", "MIMEHeader"];

/// `can(...)` features mailwarden has.
const FEATURES: [&str; 2] = [
    // meta rules treat undefined dependencies as 0
    "Mail::SpamAssassin::Conf::feature_bug6558_free",
    // the regex constructs of Perl 5.10 (possessive, \K, named groups) are translated
    "Mail::SpamAssassin::Conf::perl_min_version_5010000",
];

/// Where something was defined.
#[derive(Debug, Clone)]
pub struct Loc {
    pub file: Arc<PathBuf>,
    pub line: usize,
}

/// Which header(s) a `header` rule reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderWhat {
    Named(String),
    /// `ALL`: every header as "Name: value\n".
    All,
    /// `ToCc`: To then Cc.
    ToCc,
    /// `MESSAGEID`: the message-id headers.
    MessageId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderPart {
    Value,
    Addr,
    Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    All,
    First,
    Last,
}

/// A header source: what `get(...)` in SpamAssassin returns for the rule's header spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderSource {
    pub what: HeaderWhat,
    pub part: HeaderPart,
    pub raw: bool,
    pub which: Which,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeywordView {
    Body,
    Subject,
    Uri,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeywordTarget {
    View(KeywordView),
    Header(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachField {
    Filename,
    Type,
    /// The name of a file inside an attached zip archive (its path in the archive), at any
    /// depth the attachment policy opens.
    ArchiveFilename,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    Header {
        source: HeaderSource,
        neg: bool,
        if_unset: Option<Vec<u8>>,
        re: Delimited,
    },
    Exists {
        header: String,
    },
    Body(Delimited),
    RawBody(Delimited),
    Uri(Delimited),
    Full(Delimited),
    MimeHeader {
        header: String,
        raw: bool,
        neg: bool,
        re: Delimited,
    },
    Meta(String),
    Keywords {
        target: KeywordTarget,
        entries: Vec<String>,
    },
    Attachment {
        field: AttachField,
        re: Delimited,
    },
    /// Defined (so meta rules may name it) but not run by mailwarden.
    Skipped {
        reason: &'static str,
        message: String,
    },
}

impl RuleKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            RuleKind::Header { .. } | RuleKind::Exists { .. } => "header",
            RuleKind::Body(_) => "body",
            RuleKind::RawBody(_) => "rawbody",
            RuleKind::Uri(_) => "uri",
            RuleKind::Full(_) => "full",
            RuleKind::MimeHeader { .. } => "mimeheader",
            RuleKind::Meta(_) => "meta",
            RuleKind::Keywords { .. } => "keywords",
            RuleKind::Attachment { .. } => "attachment",
            RuleKind::Skipped { .. } => "skipped",
        }
    }

    /// The regex of a regex rule.
    pub fn regex_mut(&mut self) -> Option<&mut Delimited> {
        match self {
            RuleKind::Header { re, .. }
            | RuleKind::Body(re)
            | RuleKind::RawBody(re)
            | RuleKind::Uri(re)
            | RuleKind::Full(re)
            | RuleKind::MimeHeader { re, .. }
            | RuleKind::Attachment { re, .. } => Some(re),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleDef {
    pub kind: RuleKind,
    pub loc: Loc,
}

/// Everything read from the rule files.
#[derive(Debug, Default)]
pub struct Defs {
    pub rules: BTreeMap<String, RuleDef>,
    pub scores: HashMap<String, [f64; 4]>,
    pub describe: HashMap<String, String>,
    pub tflags: HashMap<String, String>,
    pub priority: HashMap<String, i32>,
    /// mailwarden's `action NAME reject|tempfail|discard|quarantine|tag|accept`.
    pub actions: HashMap<String, crate::config::Action>,
    pub replace_tag: HashMap<String, Vec<u8>>,
    pub replace_pre: HashMap<String, Vec<u8>>,
    pub replace_inter: HashMap<String, Vec<u8>>,
    pub replace_post: HashMap<String, Vec<u8>>,
    pub replace_start: Option<Vec<u8>>,
    pub replace_end: Option<Vec<u8>>,
    pub replace_rules: BTreeSet<String>,
    pub files: usize,
    pub skipped: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    pub errors: Vec<Diagnostic>,
    /// Every `score`, `describe`, `tflags` and `action` line, for the check that the name it
    /// gives is defined somewhere in the loaded set.
    pub mentions: Vec<Mention>,
    /// Names that rule directives in false `if`/`ifplugin` sections would define.
    pub inactive: HashSet<String>,
}

/// A line that gives a rule name something (a score, a description, flags, an action).
#[derive(Debug, Clone)]
pub struct Mention {
    pub name: String,
    /// The directive: "score", "describe", "tflags" or "action".
    pub directive: &'static str,
    pub loc: Loc,
}

/// Directives that define a rule name (their first word).
const RULE_DIRECTIVES: [&str; 9] = [
    "header",
    "body",
    "rawbody",
    "uri",
    "full",
    "mimeheader",
    "meta",
    "keywords",
    "attachment",
];

/// Directives of SpamAssassin plugins mailwarden does not implement that define a rule name.
const PLUGIN_RULES: [&str; 8] = [
    "askdns",
    "urirhssub",
    "urirhsbl",
    "uridnsbl",
    "uridnssub",
    "uri_detail",
    "hashbl_rule",
    "check_hashbl",
];

/// Directives of SpamAssassin plugins mailwarden does not implement.
const PLUGIN_DIRECTIVES: [&str; 40] = [
    "uridnsbl_skip_domain",
    "uridnsbl_max_domains",
    "freemail_domains",
    "freemail_whitelist",
    "freemail_welcomelist",
    "freemail_import_whitelist_auth",
    "freemail_import_welcomelist_auth",
    "url_shortener",
    "url_shortener_get",
    "adsp_override",
    "def_whitelist_from_dkim",
    "def_welcomelist_from_dkim",
    "whitelist_from_dkim",
    "welcomelist_from_dkim",
    "def_whitelist_from_spf",
    "def_welcomelist_from_spf",
    "whitelist_from_spf",
    "welcomelist_from_spf",
    "def_whitelist_auth",
    "def_welcomelist_auth",
    "whitelist_auth",
    "welcomelist_auth",
    "unwhitelist_auth",
    "unwelcomelist_auth",
    "fns_ignore_headers",
    "fns_ignore_dkim",
    "fns_check",
    "fns_extrachars",
    "bayes_ignore_header",
    "bayes_stopword_en",
    "shortcircuit",
    "dns_block_rule",
    "dcc_body_max",
    "pyzor_max",
    "razor_config",
    "whitelist_subject",
    "welcomelist_subject",
    "blacklist_subject",
    "blocklist_subject",
    "txrep_factor",
];

/// Core SpamAssassin settings that mean nothing to a rule engine.
const SETTINGS: [&str; 56] = [
    "required_score",
    "required_hits",
    "report_safe",
    "report_contact",
    "report_hostname",
    "report",
    "clear_report_template",
    "unsafe_report",
    "clear_unsafe_report_template",
    "add_header",
    "remove_header",
    "clear_headers",
    "ok_locales",
    "ok_languages",
    "lock",
    "test",
    "redirector_pattern",
    "util_rb_tld",
    "util_rb_2tld",
    "util_rb_3tld",
    "clear_util_rb",
    "dns_local_ports_avoid",
    "dns_local_ports_permit",
    "dns_available",
    "dns_server",
    "dns_options",
    "originating_ip_headers",
    "clear_originating_ip_headers",
    "trusted_networks",
    "internal_networks",
    "msa_networks",
    "clear_trusted_networks",
    "clear_internal_networks",
    "clear_msa_networks",
    "envelope_sender_header",
    "require_version",
    "version_tag",
    "include",
    "loadplugin",
    "tryplugin",
    "whitelist_from",
    "welcomelist_from",
    "blacklist_from",
    "blocklist_from",
    "unwhitelist_from",
    "unwelcomelist_from",
    "def_whitelist_from_rcvd",
    "def_welcomelist_from_rcvd",
    "whitelist_from_rcvd",
    "welcomelist_from_rcvd",
    "enlist_uri_host",
    "delist_uri_host",
    "enlist_addrlist",
    "delist_addrlist",
    "reuse",
    "rewrite_header",
];

struct IfFrame {
    line: usize,
    kind: &'static str,
    /// skipping state outside this frame
    outer_skip: bool,
    cond: bool,
}

/// Reads `paths` (files or directories of `*.cf`) into `defs`.
pub fn read_paths(paths: &[PathBuf], plugins: &HashSet<String>, defs: &mut Defs) {
    for path in paths {
        if path.is_dir() {
            let entries = match std::fs::read_dir(path) {
                Ok(e) => e,
                Err(e) => {
                    defs.errors.push(diag(
                        &Arc::new(path.clone()),
                        0,
                        None,
                        "unreadable",
                        format!("cannot read directory: {e}"),
                    ));
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cf") && p.is_file())
                .collect();
            files.sort();
            for f in files {
                read_file(&f, plugins, defs);
            }
        } else {
            read_file(path, plugins, defs);
        }
    }
}

fn diag(
    file: &Arc<PathBuf>,
    line: usize,
    rule: Option<&str>,
    reason: &str,
    message: String,
) -> Diagnostic {
    Diagnostic {
        file: file.as_ref().clone(),
        line,
        rule: rule.map(str::to_string),
        reason: reason.to_string(),
        message,
    }
}

pub fn read_file(path: &Path, plugins: &HashSet<String>, defs: &mut Defs) {
    let file = Arc::new(path.to_path_buf());
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            defs.errors.push(diag(
                &file,
                0,
                None,
                "unreadable",
                format!("cannot read rule file: {e}"),
            ));
            return;
        }
    };
    defs.files += 1;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut ifs: Vec<IfFrame> = Vec::new();
    let mut skip = false;
    for (idx, raw_line) in bytes.split(|&b| b == b'\n').enumerate() {
        let lineno = idx + 1;
        let line = strip_comment(raw_line);
        let line = trim(&line);
        if line.is_empty() {
            continue;
        }
        let (key, value) = split_word(line);
        let key = String::from_utf8_lossy(key)
            .to_ascii_lowercase()
            .replace('-', "_");
        let mut cx = Cx {
            file: &file,
            line: lineno,
            defs,
        };
        match key.as_str() {
            "endif" => {
                if !value.is_empty() {
                    cx.error(None, "syntax", "'endif' must stand alone".into());
                }
                match ifs.pop() {
                    Some(f) => skip = f.outer_skip,
                    None => cx.error(None, "syntax", "'endif' without 'if'".into()),
                }
                continue;
            }
            "else" => {
                match ifs.last() {
                    Some(f) => skip = f.outer_skip || f.cond,
                    None => cx.error(None, "syntax", "'else' without 'if'".into()),
                }
                continue;
            }
            "if" | "ifplugin" => {
                let text = String::from_utf8_lossy(value).into_owned();
                if text.is_empty() {
                    cx.error(None, "syntax", format!("'{key}' needs a condition"));
                }
                let cond = if skip {
                    false
                } else if key == "ifplugin" {
                    plugin_provided(&text, plugins)
                } else {
                    match eval_condition(&text, plugins) {
                        Ok(v) => v,
                        Err(e) => {
                            cx.warn(
                                None,
                                "condition",
                                format!("cannot evaluate 'if {text}' ({e}); taken as false"),
                            );
                            false
                        }
                    }
                };
                ifs.push(IfFrame {
                    line: lineno,
                    kind: if key == "if" { "if" } else { "ifplugin" },
                    outer_skip: skip,
                    cond,
                });
                skip = skip || !cond;
                continue;
            }
            _ => {}
        }
        if skip {
            // not read, but the name exists for a setup with that plugin or version: its
            // score lines elsewhere are no mistake
            if RULE_DIRECTIVES.contains(&key.as_str()) || PLUGIN_RULES.contains(&key.as_str()) {
                let name = String::from_utf8_lossy(split_word(value).0);
                if is_rule_name(&name) {
                    defs.inactive.insert(name.into_owned());
                }
            }
            continue;
        }
        if key == "lang" {
            // localized variants of other lines; mailwarden speaks the default language
            continue;
        }
        cx.directive(&key, value, &dir);
    }
    for f in ifs {
        defs.errors.push(diag(
            &file,
            f.line,
            None,
            "syntax",
            format!("'{}' is never closed by 'endif'", f.kind),
        ));
    }
}

/// Removes a `#` comment (not `\#`), then unescapes `\#`, as SpamAssassin does.
fn strip_comment(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut cut = line.len();
    for i in 0..line.len() {
        if line[i] == b'#' && (i == 0 || line[i - 1] != b'\\') {
            cut = i;
            break;
        }
    }
    let mut out = Vec::with_capacity(cut);
    let mut i = 0;
    while i < cut {
        if line[i] == b'\\' && line.get(i + 1) == Some(&b'#') {
            out.push(b'#');
            i += 2;
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// First whitespace-separated word and the (trimmed) rest.
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(u8::is_ascii_whitespace) {
        Some(i) => (&s[..i], trim(&s[i..])),
        None => (s, &[]),
    }
}

fn is_rule_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 100
}

fn short_plugin(name: &str) -> &str {
    name.trim()
        .trim_start_matches("Mail::SpamAssassin::Plugin::")
        .trim()
}

fn plugin_provided(name: &str, plugins: &HashSet<String>) -> bool {
    plugins.contains(short_plugin(name))
}

/// Whether `key` is a directive of a SpamAssassin plugin mailwarden does not run.
fn is_plugin_directive(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "bayes_",
        "use_",
        "txrep_",
        "auto_whitelist",
        "auto_welcomelist",
        "dcc_",
        "pyzor_",
        "razor_",
        "dkim_",
        "spf_",
        "dmarc_",
        "asn_",
        "uridnsbl_",
        "askdns_",
        "hashbl_",
        "textcat_",
    ];
    PLUGIN_DIRECTIVES.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

struct Cx<'a> {
    file: &'a Arc<PathBuf>,
    line: usize,
    defs: &'a mut Defs,
}

impl Cx<'_> {
    fn error(&mut self, rule: Option<&str>, reason: &str, message: String) {
        self.defs
            .errors
            .push(diag(self.file, self.line, rule, reason, message));
    }
    fn warn(&mut self, rule: Option<&str>, reason: &str, message: String) {
        self.defs
            .warnings
            .push(diag(self.file, self.line, rule, reason, message));
    }
    fn skip(&mut self, rule: Option<&str>, reason: &str, message: String) {
        self.defs
            .skipped
            .push(diag(self.file, self.line, rule, reason, message));
    }

    fn loc(&self) -> Loc {
        Loc {
            file: self.file.clone(),
            line: self.line,
        }
    }

    fn define(&mut self, name: &str, kind: RuleKind) {
        let loc = self.loc();
        self.defs
            .rules
            .insert(name.to_string(), RuleDef { kind, loc });
    }

    /// `NAME rest` with a valid rule name, or an error.
    fn name_and_rest<'v>(&mut self, key: &str, value: &'v [u8]) -> Option<(String, &'v [u8])> {
        let (name, rest) = split_word(value);
        let name = String::from_utf8_lossy(name).into_owned();
        if name.is_empty() {
            self.error(None, "syntax", format!("'{key}' needs a rule name"));
            return None;
        }
        if !is_rule_name(&name) {
            self.error(
                Some(&name),
                "syntax",
                format!("'{name}' is not a valid rule name (letters, digits, '_')"),
            );
            return None;
        }
        Some((name, rest))
    }

    fn need_rest(&mut self, key: &str, name: &str, rest: &[u8]) -> bool {
        if rest.is_empty() {
            self.error(
                Some(name),
                "syntax",
                format!("'{key} {name}' is missing its definition"),
            );
            false
        } else {
            true
        }
    }

    fn delimited(&mut self, name: &str, text: &[u8]) -> Option<Delimited> {
        match perl::split_delimited(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    Some(name),
                    "syntax",
                    format!("{name}: {e}: {}", String::from_utf8_lossy(text)),
                );
                None
            }
        }
    }

    /// Handles one directive: records rule-name mentions, then dispatches on `key`.
    fn directive(&mut self, key: &str, value: &[u8], dir: &Path) {
        self.record_mention(key, value);
        match key {
            "header" => self.header_rule(value),
            "body" | "rawbody" | "uri" | "full" => self.regex_rule(key, value),
            "mimeheader" => self.mimeheader_rule(value),
            "meta" => self.meta_rule(value),
            "score" => self.score(value),
            "describe" | "tflags" => self.rule_text(key, value),
            "action" => self.action(value),
            "priority" => self.priority(value),
            "replace_start" | "replace_end" => self.replace_delimiter(key, value),
            "replace_tag" | "replace_pre" | "replace_inter" | "replace_post" => {
                self.replace_part(key, value)
            }
            "replace_rules" => {
                for name in String::from_utf8_lossy(value).split_whitespace() {
                    self.defs.replace_rules.insert(name.to_string());
                }
            }
            "keywords" => self.keywords_rule(value, dir),
            "attachment" => self.attachment_rule(value),
            _ => self.not_run(key, value),
        }
    }

    /// Records where `score`, `describe`, `tflags` and `action` name a rule (for the
    /// undefined-name lint).
    fn record_mention(&mut self, key: &str, value: &[u8]) {
        let Some(&directive) = ["score", "describe", "tflags", "action"]
            .iter()
            .find(|d| **d == key)
        else {
            return;
        };
        let name = String::from_utf8_lossy(split_word(value).0);
        if is_rule_name(&name) {
            let loc = self.loc();
            self.defs.mentions.push(Mention {
                name: name.into_owned(),
                directive,
                loc,
            });
        }
    }

    /// `body`, `rawbody`, `uri` or `full NAME /re/flags` (an `eval:` test is skipped).
    fn regex_rule(&mut self, key: &str, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest(key, value) else {
            return;
        };
        if !self.need_rest(key, &name, rest) {
            return;
        }
        if rest.starts_with(b"eval:") {
            self.skipped_rule(&name, "eval test", key, rest);
            return;
        }
        let Some(re) = self.delimited(&name, rest) else {
            return;
        };
        let kind = match key {
            "body" => RuleKind::Body(re),
            "rawbody" => RuleKind::RawBody(re),
            "uri" => RuleKind::Uri(re),
            _ => RuleKind::Full(re),
        };
        self.define(&name, kind);
    }

    /// `meta NAME expression` (the expression is parsed when the rule set is built).
    fn meta_rule(&mut self, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest("meta", value) else {
            return;
        };
        if !self.need_rest("meta", &name, rest) {
            return;
        }
        let expr = String::from_utf8_lossy(rest).into_owned();
        self.define(&name, RuleKind::Meta(expr));
    }

    /// `describe NAME text` or `tflags NAME flags`: text kept per rule name.
    fn rule_text(&mut self, key: &str, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest(key, value) else {
            return;
        };
        let map = if key == "describe" {
            &mut self.defs.describe
        } else {
            &mut self.defs.tflags
        };
        map.insert(name, String::from_utf8_lossy(rest).into_owned());
    }

    /// `action NAME accept|tag|quarantine|tempfail|discard|reject` (a mailwarden extension).
    fn action(&mut self, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest("action", value) else {
            return;
        };
        use crate::config::Action;
        let word = String::from_utf8_lossy(rest).trim().to_ascii_lowercase();
        let action = match word.as_str() {
            "accept" => Action::Accept,
            "tag" => Action::Tag,
            "quarantine" => Action::Quarantine,
            "tempfail" => Action::Tempfail,
            "discard" => Action::Discard,
            "reject" => Action::Reject,
            _ => {
                return self.error(
                    Some(&name),
                    "syntax",
                    format!(
                        "action {name}: '{word}' is not one of accept, tag, quarantine, tempfail, discard, reject"
                    ),
                );
            }
        };
        self.defs.actions.insert(name, action);
    }

    /// `priority NAME integer`.
    fn priority(&mut self, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest("priority", value) else {
            return;
        };
        match std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
        {
            Some(p) => {
                self.defs.priority.insert(name, p);
            }
            None => self.error(
                Some(&name),
                "syntax",
                format!(
                    "priority {name}: '{}' is not an integer",
                    String::from_utf8_lossy(rest)
                ),
            ),
        }
    }

    /// `replace_start` or `replace_end VALUE`: the ReplaceTags placeholder delimiters.
    fn replace_delimiter(&mut self, key: &str, value: &[u8]) {
        if value.is_empty() {
            self.error(None, "syntax", format!("'{key}' needs a value"));
            return;
        }
        if key == "replace_start" {
            self.defs.replace_start = Some(value.to_vec());
        } else {
            self.defs.replace_end = Some(value.to_vec());
        }
    }

    /// `replace_tag`, `replace_pre`, `replace_inter` or `replace_post TAG VALUE`.
    fn replace_part(&mut self, key: &str, value: &[u8]) {
        let (tag, rest) = split_word(value);
        if tag.is_empty() || rest.is_empty() {
            self.error(
                None,
                "syntax",
                format!("'{key}' needs a tag name and a value"),
            );
            return;
        }
        let tag = String::from_utf8_lossy(tag).into_owned();
        let map = match key {
            "replace_tag" => &mut self.defs.replace_tag,
            "replace_pre" => &mut self.defs.replace_pre,
            "replace_inter" => &mut self.defs.replace_inter,
            _ => &mut self.defs.replace_post,
        };
        map.insert(tag, rest.to_vec());
    }

    /// A directive mailwarden does not run: a plugin's rule (skipped under its name), a
    /// plugin's directive, an ignored setting, or an unknown directive.
    fn not_run(&mut self, key: &str, value: &[u8]) {
        if PLUGIN_RULES.contains(&key) {
            let (name, _) = split_word(value);
            let name = String::from_utf8_lossy(name).into_owned();
            if is_rule_name(&name) {
                self.skipped_rule(&name, "plugin directive", key, value);
            } else {
                self.skip(None, "plugin directive", format!("'{key}' not implemented"));
            }
        } else if is_plugin_directive(key) {
            self.skip(
                None,
                "plugin directive",
                format!("'{key}' belongs to a SpamAssassin plugin mailwarden does not run"),
            );
        } else if SETTINGS.contains(&key) {
            self.skip(
                None,
                "setting ignored",
                format!("'{key}' is a SpamAssassin setting mailwarden ignores"),
            );
        } else {
            self.skip(
                None,
                "unknown directive",
                format!("unknown directive '{key}'"),
            );
        }
    }

    fn skipped_rule(&mut self, name: &str, reason: &'static str, key: &str, rest: &[u8]) {
        let text = String::from_utf8_lossy(rest);
        let shown: String = text.chars().take(60).collect();
        let message = format!("{name}: {key} {shown} not implemented");
        self.skip(Some(name), reason, message.clone());
        self.define(name, RuleKind::Skipped { reason, message });
    }

    fn header_rule(&mut self, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest("header", value) else {
            return;
        };
        if !self.need_rest("header", &name, rest) {
            return;
        }
        if rest.starts_with(b"eval:") {
            self.skipped_rule(&name, "eval test", "header", rest);
            return;
        }
        if let Some(h) = rest.strip_prefix(b"exists:") {
            let h = String::from_utf8_lossy(trim(h))
                .trim_end_matches(':')
                .to_string();
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
            {
                self.error(
                    Some(&name),
                    "syntax",
                    format!("{name}: bad header name in exists:"),
                );
                return;
            }
            self.define(&name, RuleKind::Exists { header: h });
            return;
        }
        // Header[:mod[:mod]] =~ /re/flags [if-unset: X]
        let Some(op_at) = find_op(rest) else {
            self.error(
                Some(&name),
                "syntax",
                format!("{name}: expected 'Header =~ /re/' or 'Header !~ /re/'"),
            );
            return;
        };
        let spec = String::from_utf8_lossy(trim(&rest[..op_at])).into_owned();
        let neg = rest[op_at] == b'!';
        let mut pat = trim(&rest[op_at + 2..]);
        let mut if_unset = None;
        if let Some((p, unset)) = split_if_unset(pat) {
            pat = p;
            if_unset = Some(unset);
        }
        let mut parts = spec.split(':');
        let hname = parts.next().unwrap_or("").to_string();
        if hname.is_empty()
            || !hname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            self.error(
                Some(&name),
                "syntax",
                format!("{name}: bad header name '{spec}'"),
            );
            return;
        }
        let mut source = HeaderSource {
            what: match hname.as_str() {
                "ALL" => HeaderWhat::All,
                "MESSAGEID" => HeaderWhat::MessageId,
                _ if hname.eq_ignore_ascii_case("ToCc") => HeaderWhat::ToCc,
                _ => HeaderWhat::Named(hname.clone()),
            },
            part: HeaderPart::Value,
            raw: false,
            which: Which::All,
        };
        for m in parts {
            match m {
                "" => {}
                "raw" => source.raw = true,
                "addr" => source.part = HeaderPart::Addr,
                "name" => source.part = HeaderPart::Name,
                "first" => source.which = Which::First,
                "last" => source.which = Which::Last,
                "host" | "domain" | "ip" | "revip" => {
                    self.skipped_rule(&name, "header modifier", "header", rest);
                    return;
                }
                _ => {
                    self.error(
                        Some(&name),
                        "syntax",
                        format!("{name}: unknown header modifier ':{m}'"),
                    );
                    return;
                }
            }
        }
        let Some(re) = self.delimited(&name, pat) else {
            return;
        };
        self.define(
            &name,
            RuleKind::Header {
                source,
                neg,
                if_unset,
                re,
            },
        );
    }

    fn mimeheader_rule(&mut self, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest("mimeheader", value) else {
            return;
        };
        if !self.need_rest("mimeheader", &name, rest) {
            return;
        }
        let Some(op_at) = find_op(rest) else {
            self.error(
                Some(&name),
                "syntax",
                format!("{name}: expected 'Header =~ /re/'"),
            );
            return;
        };
        let spec = String::from_utf8_lossy(trim(&rest[..op_at])).into_owned();
        let (header, raw) = match spec.split_once(':') {
            Some((h, "raw")) => (h.to_string(), true),
            Some((h, "")) => (h.to_string(), false),
            Some(_) => {
                self.skipped_rule(&name, "header modifier", "mimeheader", rest);
                return;
            }
            None => (spec.clone(), false),
        };
        let neg = rest[op_at] == b'!';
        let Some(re) = self.delimited(&name, trim(&rest[op_at + 2..])) else {
            return;
        };
        self.define(
            &name,
            RuleKind::MimeHeader {
                header,
                raw,
                neg,
                re,
            },
        );
    }

    fn score(&mut self, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest("score", value) else {
            return;
        };
        let text = String::from_utf8_lossy(rest);
        let nums: Result<Vec<f64>, _> = text
            .split_whitespace()
            .map(|t| {
                t.trim_start_matches('(')
                    .trim_end_matches(')')
                    .parse::<f64>()
            })
            .collect();
        match nums {
            Ok(v) if v.len() == 1 && v[0].is_finite() => {
                self.defs.scores.insert(name, [v[0]; 4]);
            }
            Ok(v) if v.len() == 4 && v.iter().all(|x| x.is_finite()) => {
                self.defs.scores.insert(name, [v[0], v[1], v[2], v[3]]);
            }
            _ => self.error(
                Some(&name),
                "bad score",
                format!("score {name}: expected 1 or 4 numbers, got '{text}'"),
            ),
        }
    }

    fn keywords_rule(&mut self, value: &[u8], dir: &Path) {
        let Some((name, rest)) = self.name_and_rest("keywords", value) else {
            return;
        };
        let (target, file) = split_word(rest);
        let target = String::from_utf8_lossy(target).into_owned();
        let file = String::from_utf8_lossy(file).into_owned();
        let target = match target.as_str() {
            "body" => KeywordTarget::View(KeywordView::Body),
            "subject" => KeywordTarget::View(KeywordView::Subject),
            "uri" => KeywordTarget::View(KeywordView::Uri),
            t => match t.strip_prefix("header:") {
                Some(h) if !h.is_empty() => KeywordTarget::Header(h.to_string()),
                _ => {
                    self.error(
                        Some(&name),
                        "syntax",
                        format!(
                            "keywords {name}: target must be body, subject, uri or header:NAME, not '{t}'"
                        ),
                    );
                    return;
                }
            },
        };
        if file.is_empty() {
            self.error(
                Some(&name),
                "syntax",
                format!("keywords {name}: missing keyword file"),
            );
            return;
        }
        let path = dir.join(&file);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) => {
                self.error(
                    Some(&name),
                    "missing keyword file",
                    format!("keywords {name}: cannot read {}: {e}", path.display()),
                );
                return;
            }
        };
        let entries: Vec<String> = text
            .split(|&b| b == b'\n')
            .map(|l| {
                let l = match l.iter().position(|&b| b == b'#') {
                    Some(i) => &l[..i],
                    None => l,
                };
                String::from_utf8_lossy(trim(l))
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|l| !l.is_empty())
            .collect();
        if entries.is_empty() {
            self.warn(
                Some(&name),
                "empty keyword file",
                format!("keywords {name}: {} has no entries", path.display()),
            );
        }
        self.define(&name, RuleKind::Keywords { target, entries });
    }

    fn attachment_rule(&mut self, value: &[u8]) {
        let Some((name, rest)) = self.name_and_rest("attachment", value) else {
            return;
        };
        let (field, rest) = split_word(rest);
        let field = match field {
            b"filename" => AttachField::Filename,
            b"type" => AttachField::Type,
            b"archive_filename" => AttachField::ArchiveFilename,
            _ => {
                self.error(
                    Some(&name),
                    "syntax",
                    format!(
                        "attachment {name}: expected 'filename =~ /re/', 'type =~ /re/' or 'archive_filename =~ /re/'"
                    ),
                );
                return;
            }
        };
        let Some(re_text) = rest.strip_prefix(b"=~") else {
            self.error(
                Some(&name),
                "syntax",
                format!("attachment {name}: expected '=~ /re/' after the field"),
            );
            return;
        };
        let Some(re) = self.delimited(&name, trim(re_text)) else {
            return;
        };
        self.define(&name, RuleKind::Attachment { field, re });
    }
}

/// Position of the first `=~` or `!~`.
fn find_op(s: &[u8]) -> Option<usize> {
    s.windows(2).position(|w| w == b"=~" || w == b"!~")
}

/// `PATTERN [if-unset: VALUE]` → (PATTERN, VALUE).
fn split_if_unset(s: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    if !s.ends_with(b"]") {
        return None;
    }
    let marker = b"[if-unset:";
    let at = s.windows(marker.len()).rposition(|w| w == marker)?;
    if at == 0 || !s[at - 1].is_ascii_whitespace() {
        return None;
    }
    let value = trim(&s[at + marker.len()..s.len() - 1]).to_vec();
    Some((trim(&s[..at]), value))
}

// ---------------------------------------------------------------------------------------------
// `if` conditions

#[derive(Debug, Clone, PartialEq)]
enum CTok {
    Num(f64),
    Word(String),
    Op(&'static str),
}

fn ctokens(s: &str) -> Result<Vec<CTok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    const OPS: [&str; 11] = ["&&", "||", ">=", "<=", "==", "!=", "!", "(", ")", ">", "<"];
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            let n: String = s[start..i].chars().filter(|c| *c != '_').collect();
            out.push(CTok::Num(
                n.parse().map_err(|_| format!("bad number '{n}'"))?,
            ));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            out.push(CTok::Word(s[start..i].to_string()));
        } else if let Some(op) = OPS.iter().find(|op| s[i..].starts_with(**op)) {
            out.push(CTok::Op(op));
            i += op.len();
        } else {
            return Err(format!("unexpected '{}'", &s[i..]));
        }
    }
    Ok(out)
}

/// Evaluates an `if` condition: `version`, `perl_version`, `plugin(X)`, `can(X)`, `has(X)`,
/// numbers, comparisons, `! && || ( )`.
pub fn eval_condition(text: &str, plugins: &HashSet<String>) -> Result<bool, String> {
    let toks = ctokens(text)?;
    let mut p = CondParser {
        t: &toks,
        i: 0,
        plugins,
        depth: 0,
    };
    let v = p.or()?;
    if p.i != toks.len() {
        return Err("trailing tokens".into());
    }
    Ok(v != 0.0)
}

struct CondParser<'a> {
    t: &'a [CTok],
    i: usize,
    plugins: &'a HashSet<String>,
    depth: usize,
}

impl CondParser<'_> {
    fn or(&mut self) -> Result<f64, String> {
        let mut v = self.and()?;
        while self.t.get(self.i) == Some(&CTok::Op("||")) {
            self.i += 1;
            let r = self.and()?;
            v = if v != 0.0 { v } else { r };
        }
        Ok(v)
    }
    fn and(&mut self) -> Result<f64, String> {
        let mut v = self.cmp()?;
        while self.t.get(self.i) == Some(&CTok::Op("&&")) {
            self.i += 1;
            let r = self.cmp()?;
            v = if v != 0.0 { r } else { v };
        }
        Ok(v)
    }
    fn cmp(&mut self) -> Result<f64, String> {
        let l = self.unary()?;
        if let Some(CTok::Op(op)) = self.t.get(self.i)
            && matches!(*op, ">=" | "<=" | "==" | "!=" | ">" | "<")
        {
            let op = *op;
            self.i += 1;
            let r = self.unary()?;
            let b = match op {
                ">=" => l >= r,
                "<=" => l <= r,
                "==" => l == r,
                "!=" => l != r,
                ">" => l > r,
                _ => l < r,
            };
            return Ok(if b { 1.0 } else { 0.0 });
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > 100 {
            return Err("nested too deeply".into());
        }
        let t = self.t.get(self.i).cloned().ok_or("ends too early")?;
        self.i += 1;
        let v = match t {
            CTok::Op("!") => {
                if self.unary()? != 0.0 {
                    0.0
                } else {
                    1.0
                }
            }
            CTok::Op("(") => {
                let v = self.or()?;
                if self.t.get(self.i) != Some(&CTok::Op(")")) {
                    return Err("missing ')'".into());
                }
                self.i += 1;
                v
            }
            CTok::Num(n) => n,
            CTok::Word(w) => match w.as_str() {
                "version" => SA_VERSION,
                "perl_version" => PERL_VERSION,
                "local_tests_only" => 0.0,
                "plugin" | "can" | "has" => {
                    let arg = self.paren_arg()?;
                    let yes = match w.as_str() {
                        "plugin" => plugin_provided(&arg, self.plugins),
                        _ => FEATURES.contains(&arg.as_str()),
                    };
                    if yes { 1.0 } else { 0.0 }
                }
                _ => return Err(format!("unknown word '{w}'")),
            },
            CTok::Op(o) => return Err(format!("unexpected '{o}'")),
        };
        self.depth -= 1;
        Ok(v)
    }
    fn paren_arg(&mut self) -> Result<String, String> {
        if self.t.get(self.i) != Some(&CTok::Op("(")) {
            return Err("expected '('".into());
        }
        let Some(CTok::Word(arg)) = self.t.get(self.i + 1).cloned() else {
            return Err("expected a name".into());
        };
        if self.t.get(self.i + 2) != Some(&CTok::Op(")")) {
            return Err("expected ')'".into());
        }
        self.i += 3;
        Ok(arg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn plugins() -> HashSet<String> {
        BUILTIN_PLUGINS.iter().map(|s| s.to_string()).collect()
    }

    fn read(text: &str) -> (Defs, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.cf");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let mut defs = Defs::default();
        read_file(&path, &plugins(), &mut defs);
        (defs, dir)
    }

    fn first_error(d: &Defs) -> String {
        d.errors
            .first()
            .map(|e| {
                format!(
                    "{}:{}: {}",
                    e.file.file_name().unwrap().to_string_lossy(),
                    e.line,
                    e.message
                )
            })
            .unwrap_or_default()
    }

    #[test]
    fn comments_and_escaped_hash() {
        assert_eq!(strip_comment(b"body A /x\\#y/ # note"), b"body A /x#y/ ");
        assert_eq!(strip_comment(b"# all"), b"");
        assert_eq!(strip_comment(b"x\r"), b"x");
    }

    #[test]
    fn rule_kinds() {
        let (d, _t) = read(
            "header A Subject =~ /foo/i\n\
             header B From:addr !~ m{@example\\.com$} [if-unset: none@x]\n\
             header C exists:X-Mailer\n\
             header D eval:check_foo()\n\
             body E /bar/\nrawbody F m!<b>!i\nuri G /\\.exe$/\nfull H /^X-/m\n\
             mimeheader I Content-Type:raw =~ /zip/\nmeta J A && !B\n\
             describe A Subject has foo\nscore A 1.5\nscore J 1 2 3 4\ntflags E multiple maxhits=3\n\
             priority J 500\n",
        );
        assert!(d.errors.is_empty(), "{}", first_error(&d));
        assert_eq!(d.rules.len(), 10);
        match &d.rules["B"].kind {
            RuleKind::Header {
                source,
                neg,
                if_unset,
                re,
            } => {
                assert_eq!(source.what, HeaderWhat::Named("From".into()));
                assert_eq!(source.part, HeaderPart::Addr);
                assert!(*neg);
                assert_eq!(if_unset.as_deref(), Some(&b"none@x"[..]));
                assert_eq!(re.pattern, b"@example\\.com$");
            }
            k => panic!("{k:?}"),
        }
        assert!(matches!(
            d.rules["D"].kind,
            RuleKind::Skipped {
                reason: "eval test",
                ..
            }
        ));
        assert_eq!(d.skipped.len(), 1);
        assert_eq!(d.skipped[0].line, 4);
        assert_eq!(d.scores["A"], [1.5; 4]);
        assert_eq!(d.scores["J"], [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.priority["J"], 500);
        assert_eq!(d.tflags["E"], "multiple maxhits=3");
        assert_eq!(d.rules["J"].loc.line, 10);
    }

    #[test]
    fn later_definitions_override() {
        let (d, _t) = read("body A /one/\nbody A /two/\n");
        match &d.rules["A"].kind {
            RuleKind::Body(re) => assert_eq!(re.pattern, b"two"),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn conditionals() {
        let (d, _t) = read(
            "ifplugin Mail::SpamAssassin::Plugin::ReplaceTags\nbody A /a/\nendif\n\
             ifplugin Mail::SpamAssassin::Plugin::DKIM\nbody B /b/\n  if version > 3.0\n  body C /c/\n  endif\nelse\nbody D /d/\nendif\n\
             if (version >= 3.004002) && !plugin(Mail::SpamAssassin::Plugin::SPF)\nbody E /e/\nendif\n\
             if can(Mail::SpamAssassin::Conf::feature_capture_rules)\nbody F /f/\nendif\n\
             if can(Mail::SpamAssassin::Conf::feature_bug6558_free)\nbody G /g/\nendif\n\
             if version < 4.0\nbody H /h/\nendif\n\
             if something weird $\nbody I /i/\nendif\n",
        );
        assert!(d.errors.is_empty(), "{}", first_error(&d));
        let names: Vec<&str> = d.rules.keys().map(String::as_str).collect();
        assert_eq!(names, ["A", "D", "E", "G"]);
        assert_eq!(d.warnings.len(), 1);
        assert_eq!(d.warnings[0].line, 24);
        assert_eq!(d.warnings[0].reason, "condition");
    }

    #[test]
    fn errors_name_file_and_line() {
        let (d, _t) = read("body A /ok/\nscore A lots\n");
        assert_eq!(
            first_error(&d),
            "t.cf:2: score A: expected 1 or 4 numbers, got 'lots'"
        );
        let (d, _t) = read("\n\nbody A foo\n");
        assert!(first_error(&d).starts_with("t.cf:3: A: missing regexp delimiters"));
        let (d, _t) = read("ifplugin X\nbody A /a/\n");
        assert_eq!(
            first_error(&d),
            "t.cf:1: 'ifplugin' is never closed by 'endif'"
        );
        let (d, _t) = read("endif\n");
        assert_eq!(first_error(&d), "t.cf:1: 'endif' without 'if'");
        let (d, _t) = read("header A Subject /x/\n");
        assert!(first_error(&d).starts_with("t.cf:1: A: expected 'Header =~ /re/'"));
        let (d, _t) = read("body 9A /x/\n");
        assert!(first_error(&d).starts_with("t.cf:1: '9A' is not a valid rule name"));
        let (d, _t) = read("keywords K body missing.txt\n");
        assert_eq!(d.errors[0].reason, "missing keyword file");
        let (d, _t) = read("header A Subject:bogus =~ /x/\n");
        assert!(first_error(&d).contains("unknown header modifier"));
    }

    #[test]
    fn skipped_directives_are_counted_with_reasons() {
        let (d, _t) = read(
            "askdns A _SENDERDOMAIN_ TXT /x/\nuri_detail B text =~ /x/\nfreemail_domains gmail.com\n\
             required_score 5\nfrobnicate 1\nlang de describe X Hallo\n",
        );
        assert!(d.errors.is_empty());
        let reasons: Vec<&str> = d.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "plugin directive",
                "plugin directive",
                "plugin directive",
                "setting ignored",
                "unknown directive"
            ]
        );
        assert!(d.rules.contains_key("A") && d.rules.contains_key("B"));
        assert_eq!(d.skipped[4].line, 5);
    }

    #[test]
    fn keywords_and_attachments() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("words.txt"),
            "# pharmacy\nViagra\n  cheap   pills \n\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("k.cf"),
            "keywords K body words.txt\nkeywords L header:X-Foo words.txt\n\
             attachment E filename =~ /\\.exe$/i\nattachment T type =~ m{^application/x-msdownload$}\n",
        )
        .unwrap();
        let mut d = Defs::default();
        read_paths(&[dir.path().to_path_buf()], &plugins(), &mut d);
        assert!(d.errors.is_empty(), "{}", first_error(&d));
        match &d.rules["K"].kind {
            RuleKind::Keywords { target, entries } => {
                assert_eq!(*target, KeywordTarget::View(KeywordView::Body));
                assert_eq!(entries, &["Viagra", "cheap pills"]);
            }
            k => panic!("{k:?}"),
        }
        assert!(matches!(
            d.rules["L"].kind,
            RuleKind::Keywords {
                target: KeywordTarget::Header(_),
                ..
            }
        ));
        assert!(matches!(
            d.rules["E"].kind,
            RuleKind::Attachment {
                field: AttachField::Filename,
                ..
            }
        ));
    }

    /// Deterministic fuzzing: random directive lines never panic the reader.
    #[test]
    fn random_rule_files_never_panic() {
        let words = [
            "header",
            "body",
            "rawbody",
            "uri",
            "full",
            "mimeheader",
            "meta",
            "score",
            "describe",
            "tflags",
            "priority",
            "if",
            "ifplugin",
            "else",
            "endif",
            "replace_tag",
            "replace_rules",
            "keywords",
            "attachment",
            "A",
            "__B",
            "Subject",
            "From:addr",
            "ALL:raw",
            "exists:X",
            "=~",
            "!~",
            "/x/i",
            "m{",
            "}",
            "(",
            ")",
            "&&",
            "||",
            "!",
            "1.5",
            "-2",
            "version",
            ">=",
            "[if-unset:",
            "]",
            "#",
            "\\#",
            "eval:f()",
            "<A>",
            "\u{e4}",
            "lang",
            "\t",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let dir = tempfile::tempdir().unwrap();
        for round in 0..300 {
            let mut text = String::new();
            for _ in 0..(next() % 30) {
                for _ in 0..(next() % 7) {
                    text.push_str(words[(next() % words.len() as u64) as usize]);
                    text.push(if next() % 5 == 0 { '\t' } else { ' ' });
                }
                text.push('\n');
            }
            let path = dir.path().join(format!("r{round}.cf"));
            std::fs::write(&path, &text).unwrap();
            let mut defs = Defs::default();
            read_file(&path, &plugins(), &mut defs);
            let _ = super::super::RuleSet::load(&[path], &Default::default());
        }
    }

    #[test]
    fn condition_expressions() {
        let p = plugins();
        assert_eq!(eval_condition("version > 3.004", &p), Ok(true));
        assert_eq!(eval_condition("(version >= 4.000000)", &p), Ok(true));
        assert_eq!(eval_condition("!((version >= 3.004000))", &p), Ok(false));
        assert_eq!(
            eval_condition(
                "plugin(Mail::SpamAssassin::Plugin::MIMEHeader) && !plugin(X)",
                &p
            ),
            Ok(true)
        );
        assert!(eval_condition("version >", &p).is_err());
        assert!(eval_condition("(((", &p).is_err());
    }
}
