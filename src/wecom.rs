//! The WeCom group-robot client: build one request, send it, classify the answer.
//!
//! WeCom answers HTTP 200 even for errors, with `{"errcode":N,"errmsg":"…"}` in the body, so
//! every answer is parsed. Whether a failure is worth retrying is decided here, where the
//! failure is understood ([`SendError::class`], after Alertmanager's `Retrier.Check`); the
//! outbox only carries that decision out.
//! <https://developer.work.weixin.qq.com/document/path/91770>
//!
//! The webhook URL (which holds the key) is only ever used as the request target: errors from
//! attohttpc carry no URL, redirects are not followed (a redirect would carry the key to another
//! host), and attohttpc's own debug logging, which prints the URL, is muted in `main`.
//!
//! Knows nothing of queues, Alertmanager or retry counts. Blocking: call from OS threads only.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

/// We never need more of an answer than this; a hostile or broken server cannot make us buffer more.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// What the caller should do about a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Transient: back off and try again.
    Retry,
    /// WeCom's per-robot budget is spent: wait for the window to pass, then try again.
    RateLimited,
    /// Retrying cannot help (bad key, content rejected): log, count, drop.
    Permanent,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Retry => "retry",
            Class::RateLimited => "rate_limited",
            Class::Permanent => "permanent",
        }
    }
}

#[derive(Debug)]
pub enum SendError {
    /// Connect, TLS or I/O failure before an answer arrived.
    Transport(String),
    Timeout,
    /// A non-200 HTTP status.
    Http(u16),
    /// HTTP 200 but not the JSON WeCom sends.
    Garbled(String),
    /// WeCom's own error code.
    Api {
        errcode: i64,
        errmsg: String,
    },
    /// A file outside WeCom's upload bounds, refused before sending (its size in bytes).
    MediaSize(usize),
}

impl SendError {
    pub fn class(&self) -> Class {
        match self {
            SendError::Transport(_) | SendError::Timeout | SendError::Garbled(_) => Class::Retry,
            SendError::Http(429) => Class::RateLimited,
            SendError::Http(408) => Class::Retry,
            SendError::Http(code) if *code >= 500 => Class::Retry,
            SendError::Http(_) | SendError::MediaSize(_) => Class::Permanent,
            SendError::Api { errcode, .. } => classify_errcode(*errcode),
        }
    }

    /// The errcode for logs and metrics; `None` when WeCom did not answer with one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            SendError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// A short fixed word for metric labels (never free text).
    pub fn reason(&self) -> &'static str {
        match self {
            SendError::Transport(_) => "network",
            SendError::Timeout => "timeout",
            SendError::Http(code) if *code >= 500 => "http_5xx",
            SendError::Http(_) => "http_4xx",
            SendError::Garbled(_) => "garbled",
            SendError::Api { .. } => "errcode",
            SendError::MediaSize(_) => "media_size",
        }
    }
}

/// WeCom's errcodes → what to do. Codes: -1 system busy, 45009 API freq out of limit,
/// 45033 too many concurrent calls, 42001 token expired (Alertmanager's wechat notifier retries
/// it), 93000 invalid webhook URL, 40058 content invalid or too long.
pub fn classify_errcode(errcode: i64) -> Class {
    match errcode {
        -1 | 45033 | 42001 => Class::Retry,
        45009 => Class::RateLimited,
        _ => Class::Permanent,
    }
}

/// A human hint for an errcode, for logs and `send-test`.
pub fn hint(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        93000 => "the key is wrong or the robot was removed from its group",
        45009 => "rate limited: WeCom allows 20 messages per minute per robot",
        40058 => "WeCom rejected the content (too long or malformed)",
        -1 => "WeCom is busy, will retry",
        45033 => "too many concurrent calls, will retry",
        _ => return None,
    })
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SendError::Transport(e) => write!(f, "sending to wecom: {e}"),
            SendError::Timeout => write!(f, "sending to wecom: timed out"),
            SendError::Http(code) => write!(f, "sending to wecom: http status {code}"),
            SendError::Garbled(e) => write!(f, "reading wecom answer: {e}"),
            SendError::Api { errcode, errmsg } => {
                write!(f, "wecom answered errcode {errcode}: {errmsg}")?;
                if let Some(h) = hint(*errcode) {
                    write!(f, " ({h})")?;
                }
                Ok(())
            }
            SendError::MediaSize(n) => write!(
                f,
                "uploading to wecom: a file of {n} bytes is outside {MEDIA_MIN_BYTES} B to \
                 {MEDIA_MAX_BYTES} B"
            ),
        }
    }
}

impl std::error::Error for SendError {}

/// WeCom's bounds for a robot's uploaded file: "5B~20M". 20M is read as 20,000,000 bytes, the
/// smaller of its two readings.
/// <https://developer.work.weixin.qq.com/document/path/91770#文件上传接口>
pub const MEDIA_MIN_BYTES: usize = 5;
pub const MEDIA_MAX_BYTES: usize = 20_000_000;

/// The JSON body of a `file` message: a file uploaded with [`Client::upload_media`].
pub fn file_body(media_id: &str) -> String {
    json!({"msgtype": "file", "file": {"media_id": media_id}}).to_string()
}

/// A file name safe inside the multipart header: ASCII letters, digits, `.`, `-` and `_` kept,
/// anything else (quotes, line breaks, non-ASCII) made `_`.
fn safe_file_name(name: &str) -> String {
    let name: String = name
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    if name.trim_matches(['.', '_']).is_empty() {
        "alerts.md".into()
    } else {
        name
    }
}

/// The `multipart/form-data` body WeCom's upload wants: one part `media` with a `filename` (and
/// `filelength`, as WeCom's example sends). Returns the Content-Type and the body; the boundary
/// is chosen so it does not occur in the data.
pub fn multipart_body(file_name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let mut n = data.len() as u64;
    let boundary = loop {
        let b = format!("----weixin-robot-{n:016x}");
        if !data.windows(b.len()).any(|w| w == b.as_bytes()) {
            break b;
        }
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    };
    let mut body = Vec::with_capacity(data.len() + 300);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{}\"; \
             filelength={}\r\nContent-Type: application/octet-stream\r\n\r\n",
            safe_file_name(file_name),
            data.len()
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Reads `{"errcode":0,"media_id":"…"}`; errcodes as for sending.
pub fn parse_upload_answer(body: &[u8]) -> Result<String, SendError> {
    parse_answer(body)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| SendError::Garbled(format!("answer is not JSON: {e}")))?;
    match value.get("media_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(SendError::Garbled("upload answer has no media_id".into())),
    }
}

/// The JSON body of a markdown message.
pub fn markdown_body(content: &str) -> String {
    MsgType::Markdown.body(content)
}

/// The message type a robot sends notifications as.
/// <https://developer.work.weixin.qq.com/document/path/91770>
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MsgType {
    /// The default: `<font color>`, bold, links, quotes.
    #[default]
    Markdown,
    /// Newer markdown (tables, lists), without `<font color>`.
    MarkdownV2,
    /// Plain text, for clients that show markdown badly.
    Text,
}

impl MsgType {
    pub fn parse(s: &str) -> Result<MsgType, String> {
        match s {
            "markdown" => Ok(MsgType::Markdown),
            "markdown_v2" => Ok(MsgType::MarkdownV2),
            "text" => Ok(MsgType::Text),
            _ => Err("msgtype must be markdown, markdown_v2 or text".into()),
        }
    }

    /// WeCom's content limit in UTF-8 bytes: 4096 for markdown, 2048 for text.
    pub fn limit(self) -> usize {
        match self {
            MsgType::Markdown | MsgType::MarkdownV2 => MARKDOWN_MAX_BYTES,
            MsgType::Text => TEXT_MAX_BYTES,
        }
    }

    pub fn body(self, content: &str) -> String {
        match self {
            MsgType::Markdown => json!({"msgtype": "markdown", "markdown": {"content": content}}),
            MsgType::MarkdownV2 => {
                json!({"msgtype": "markdown_v2", "markdown_v2": {"content": content}})
            }
            MsgType::Text => json!({"msgtype": "text", "text": {"content": content}}),
        }
        .to_string()
    }
}

/// WeCom's limit for `markdown.content` (and `markdown_v2`), in UTF-8 bytes.
/// <https://developer.work.weixin.qq.com/document/path/91770#markdown类型>
pub const MARKDOWN_MAX_BYTES: usize = 4096;

/// WeCom's limit for `text.content`, in UTF-8 bytes.
pub const TEXT_MAX_BYTES: usize = 2048;

/// The JSON body of a `text` message that @-mentions people. Markdown can only mention by user
/// id (`<@userid>`); `text` also takes mobile numbers and "@all", so mentions travel this way.
pub fn text_body(content: &str, users: &[String], mobiles: &[String], all: bool) -> String {
    let mut mentioned: Vec<&str> = users.iter().map(String::as_str).collect();
    if all {
        mentioned.push("@all");
    }
    json!({
        "msgtype": "text",
        "text": {"content": content, "mentioned_list": mentioned, "mentioned_mobile_list": mobiles}
    })
    .to_string()
}

/// Connection settings shared by every send.
#[derive(Clone)]
pub struct Client {
    timeout: Duration,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Client {
    pub fn new(timeout: Duration, ca_file: Option<&Path>) -> Result<Client, String> {
        crate::tls::install();
        let mut extra_roots = Vec::new();
        if let Some(path) = ca_file {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("reading --ca-file {}: {e}", path.display()))?
            {
                extra_roots
                    .push(cert.map_err(|e| format!("reading --ca-file {}: {e}", path.display()))?);
            }
            if extra_roots.is_empty() {
                return Err(format!("reading --ca-file {}: no certificates found", path.display()));
            }
        }
        Ok(Client { timeout, extra_roots })
    }

    /// Posts one JSON body. Ok means WeCom answered errcode 0. Returns the time taken too.
    pub fn send(&self, url: &WebhookUrl, json_body: &str) -> (Result<(), SendError>, Duration) {
        let started = Instant::now();
        let result = self.send_inner(url, json_body);
        (result, started.elapsed())
    }

    fn send_inner(&self, url: &WebhookUrl, json_body: &str) -> Result<(), SendError> {
        let body = self.post(url, "application/json", json_body.as_bytes().to_vec())?;
        parse_answer(&body)
    }

    /// Uploads `data` as a file named `file_name` with the robot's upload API, next to its
    /// webhook URL ([`WebhookUrl::upload_url`]), and returns WeCom's `media_id` (valid 3
    /// days) for [`file_body`]. Sizes outside 5 B–20 MB are refused before anything is sent.
    pub fn upload_media(
        &self,
        url: &WebhookUrl,
        file_name: &str,
        data: &[u8],
    ) -> (Result<String, SendError>, Duration) {
        let started = Instant::now();
        let result = if (MEDIA_MIN_BYTES..=MEDIA_MAX_BYTES).contains(&data.len()) {
            let (content_type, body) = multipart_body(file_name, data);
            url.upload_url()
                .and_then(|upload| self.post(&upload, &content_type, body))
                .and_then(|answer| parse_upload_answer(&answer))
        } else {
            Err(SendError::MediaSize(data.len()))
        };
        (result, started.elapsed())
    }

    /// POSTs a body and returns the answer's body when the status is 200.
    fn post(
        &self,
        url: &WebhookUrl,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, SendError> {
        let mut req = attohttpc::post(url.expose())
            .header("Content-Type", content_type)
            .header("User-Agent", concat!("weixin-robot/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .timeout(self.timeout)
            .follow_redirects(false)
            .bytes(body);
        for cert in &self.extra_roots {
            req = req.add_root_certificate(cert.clone());
        }
        let resp = req.send().map_err(transport_error)?;
        let status = resp.status().as_u16();
        let (_, _, reader) = resp.split();
        let mut body = Vec::new();
        reader.take(MAX_ANSWER_BYTES).read_to_end(&mut body).map_err(|e| {
            if is_timeout(&e) {
                SendError::Timeout
            } else {
                SendError::Transport(format!("reading answer: {e}"))
            }
        })?;
        if status != 200 {
            return Err(SendError::Http(status));
        }
        Ok(body)
    }
}

/// Reads `{"errcode":N,"errmsg":"…"}`.
pub fn parse_answer(body: &[u8]) -> Result<(), SendError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| SendError::Garbled(format!("answer is not JSON: {e}")))?;
    let errcode = value
        .get("errcode")
        .and_then(Value::as_i64)
        .ok_or_else(|| SendError::Garbled("answer has no errcode".into()))?;
    if errcode == 0 {
        return Ok(());
    }
    let errmsg = value.get("errmsg").and_then(Value::as_str).unwrap_or("");
    // errmsg sometimes echoes a hint URL. WeCom's own never holds the key, but a proxy in
    // between may echo the request URL: hide every `key=` value before it reaches a log, an
    // error or `failed/`, and keep it short.
    let errmsg: String = redact_key_values(errmsg).chars().take(200).collect();
    Err(SendError::Api { errcode, errmsg })
}

/// `…send?key=SECRET&x` → `…send?key=***&x`, for any `key=` (any case) in `s`.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.to_ascii_lowercase().find("key=") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        let end = rest
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(rest.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

fn transport_error(e: attohttpc::Error) -> SendError {
    if let attohttpc::ErrorKind::Io(io) = e.kind() {
        if is_timeout(io) {
            return SendError::Timeout;
        }
    }
    SendError::Transport(e.to_string())
}

/// WeCom's robot endpoint; a bare key is appended to it.
/// <https://developer.work.weixin.qq.com/document/path/91770>
pub const WECOM_SEND_URL: &str = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send";

/// The webhook URL with the key inside. Only [`WebhookUrl::expose`] hands out the real URL,
/// and only the WeCom client calls it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    full: String,
    redacted: String,
}

impl WebhookUrl {
    /// Accepts a full `http(s)://host/path?key=…` URL or a bare key. Errors never echo the input.
    pub fn parse(input: &str) -> Result<WebhookUrl, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("empty: give the webhook URL or key".into());
        }
        let quoted = |q: char| input.len() >= 2 && input.starts_with(q) && input.ends_with(q);
        if quoted('"') || quoted('\'') {
            return Err(
                "it is wrapped in quotes: remove them (quotes belong to the shell, not the value)"
                    .into(),
            );
        }
        if let Some((name, _)) = input.split_once('=').filter(|(n, _)| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }) {
            return Err(format!(
                "it starts with {name}=: give only the URL or key, not a variable assignment"
            ));
        }
        if input.contains(char::is_whitespace) {
            return Err("it contains a space or line break: a URL or key has none".into());
        }
        if !input.contains("://") {
            if !input.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err("a bare key may only hold letters, digits, '-' and '_'".into());
            }
            return WebhookUrl::parse(&format!("{WECOM_SEND_URL}?key={input}"));
        }
        let url = url::Url::parse(input).map_err(|e| format!("not a URL: {e}"))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err("the URL must start with https:// (or http://)".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not carry user:password@".into());
        }
        let has_key = url.query_pairs().any(|(k, v)| k == "key" && !v.is_empty());
        if !has_key {
            return Err("the URL has no key=… query parameter".into());
        }
        let mut redacted = url.clone();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "key" { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        redacted.query_pairs_mut().clear().extend_pairs(pairs);
        Ok(WebhookUrl { full: url.to_string(), redacted: redacted.to_string().replace("%2A", "*") })
    }

    /// True when both name the same robot key (WeCom's budget is per key, whatever host or
    /// proxy the URL goes through). Compares without handing the key out.
    pub fn same_key(&self, other: &WebhookUrl) -> bool {
        let key = |u: &WebhookUrl| {
            url::Url::parse(&u.full).ok().and_then(|p| {
                p.query_pairs().find(|(k, _)| k == "key").map(|(_, v)| v.into_owned())
            })
        };
        matches!((key(self), key(other)), (Some(a), Some(b)) if a == b)
    }

    /// The real URL including the key. Call sites: the WeCom client only.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// The robot's upload URL: same scheme, host, port and key, path `…/upload_media` in
    /// place of `…/send` (so a proxy's path prefix is kept; `/cgi-bin/webhook/upload_media`
    /// when the path does not end in `/send`), and `type=file`. The error never holds the URL.
    pub fn upload_url(&self) -> Result<WebhookUrl, SendError> {
        let bad = || SendError::Transport("deriving the upload URL from the webhook URL".into());
        let mut url = url::Url::parse(&self.full).map_err(|_| bad())?;
        let key = url.query_pairs().find(|(k, _)| k == "key").map(|(_, v)| v.into_owned());
        let key = key.ok_or_else(bad)?;
        let path = match url.path().strip_suffix("/send") {
            Some(prefix) => format!("{prefix}/upload_media"),
            None => "/cgi-bin/webhook/upload_media".into(),
        };
        url.set_path(&path);
        url.set_fragment(None);
        let mut redacted = url.clone();
        url.query_pairs_mut().clear().append_pair("key", &key).append_pair("type", "file");
        redacted.query_pairs_mut().clear().append_pair("key", "***").append_pair("type", "file");
        Ok(WebhookUrl { full: url.to_string(), redacted: redacted.to_string().replace("%2A", "*") })
    }

    pub fn is_https(&self) -> bool {
        self.full.starts_with("https://")
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcode_table() {
        let cases: &[(&[u8], Option<Class>)] = &[
            (br#"{"errcode":0,"errmsg":"ok"}"#, None),
            (br#"{"errcode":45009,"errmsg":"api freq out of limit"}"#, Some(Class::RateLimited)),
            (br#"{"errcode":-1,"errmsg":"system busy"}"#, Some(Class::Retry)),
            (br#"{"errcode":45033,"errmsg":"x"}"#, Some(Class::Retry)),
            (br#"{"errcode":93000,"errmsg":"invalid webhook url"}"#, Some(Class::Permanent)),
            (br#"{"errcode":40058,"errmsg":"too long"}"#, Some(Class::Permanent)),
            (br#"{"errcode":12345}"#, Some(Class::Permanent)),
            (b"<html>gateway</html>", Some(Class::Retry)),
            (br#"{"ok":true}"#, Some(Class::Retry)),
        ];
        for (body, want) in cases {
            let got = parse_answer(body).err().map(|e| e.class());
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn http_status_table() {
        assert_eq!(SendError::Http(500).class(), Class::Retry);
        assert_eq!(SendError::Http(503).class(), Class::Retry);
        assert_eq!(SendError::Http(429).class(), Class::RateLimited);
        assert_eq!(SendError::Http(404).class(), Class::Permanent);
        assert_eq!(SendError::Timeout.class(), Class::Retry);
        assert_eq!(SendError::Transport("refused".into()).class(), Class::Retry);
    }

    #[test]
    fn same_key_whatever_the_host() -> Result<(), String> {
        let direct = WebhookUrl::parse("abc-123")?;
        let proxied = WebhookUrl::parse("http://127.0.0.1:9/cgi-bin/webhook/send?key=abc-123")?;
        let other = WebhookUrl::parse("abc-124")?;
        assert!(direct.same_key(&proxied) && proxied.same_key(&direct));
        assert!(!direct.same_key(&other));
        Ok(())
    }

    #[test]
    fn an_echoed_key_is_hidden_in_errmsg() {
        let body = br#"{"errcode":93000,"errmsg":"invalid webhook url /cgi-bin/webhook/send?KEY=s3cr3t&x=1, see key=abc def"}"#;
        let shown = parse_answer(body).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!shown.contains("s3cr3t") && !shown.contains("abc"), "{shown}");
        assert!(shown.contains("KEY=***&x=1") && shown.contains("key=*** def"), "{shown}");
        assert_eq!(redact_key_values("no secret here"), "no secret here");
        assert_eq!(redact_key_values("key="), "key=");
    }

    #[test]
    fn errors_carry_hints() {
        let e = SendError::Api { errcode: 93000, errmsg: "invalid webhook url".into() };
        assert!(e.to_string().contains("the key is wrong"));
    }

    #[test]
    fn upload_url_sits_next_to_the_webhook() -> Result<(), String> {
        let cases = [
            (
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K1",
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/upload_media?key=K1&type=file",
            ),
            (
                "http://127.0.0.1:8080/cgi-bin/webhook/send?debug=1&key=K1",
                "http://127.0.0.1:8080/cgi-bin/webhook/upload_media?key=K1&type=file",
            ),
            (
                "https://proxy.example/wecom/cgi-bin/webhook/send?key=K1",
                "https://proxy.example/wecom/cgi-bin/webhook/upload_media?key=K1&type=file",
            ),
            (
                "https://h:8443/hook?key=K1",
                "https://h:8443/cgi-bin/webhook/upload_media?key=K1&type=file",
            ),
        ];
        for (webhook, want) in cases {
            let url = WebhookUrl::parse(webhook)?.upload_url().map_err(|e| e.to_string())?;
            assert_eq!(url.expose(), want);
            assert!(
                !url.to_string().contains("K1") && url.to_string().contains("key=***"),
                "{url}"
            );
            assert!(!format!("{url:?}").contains("K1"));
        }
        Ok(())
    }

    #[test]
    fn multipart_body_has_one_media_part() {
        let data = b"# list\n| a | b |\n";
        let (content_type, body) = multipart_body("alerts-20261202-1030.md", data);
        let boundary = content_type.strip_prefix("multipart/form-data; boundary=").unwrap_or("");
        assert!(!boundary.is_empty());
        let text = String::from_utf8_lossy(&body);
        assert_eq!(
            text,
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; \
                 filename=\"alerts-20261202-1030.md\"; filelength=17\r\n\
                 Content-Type: application/octet-stream\r\n\r\n# list\n| a | b |\n\r\n--{boundary}--\r\n"
            )
        );
        // A boundary is never one that occurs in the data; names cannot break the header.
        // 35 bytes: the first boundary tried (from the length) is inside it.
        let tricky = format!("x----weixin-robot-{:016x}y", 35);
        assert_eq!(tricky.len(), 35);
        let (ct, _) = multipart_body("a", tricky.as_bytes());
        assert!(!tricky.contains(ct.split('=').nth(1).unwrap_or("")));
        assert_eq!(safe_file_name("a\"b\r\n.md"), "a_b__.md");
        assert_eq!(safe_file_name("告警.md"), "__.md");
        assert_eq!(safe_file_name("\"\""), "alerts.md");
    }

    /// Sizes outside 5 B–20 MB are refused before any connection: the URL points at a port
    /// nothing listens on, so an attempt would be a transport error instead.
    #[test]
    fn upload_size_is_checked_before_sending() -> Result<(), String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let url =
            WebhookUrl::parse(&format!("http://127.0.0.1:{port}/cgi-bin/webhook/send?key=K"))?;
        let client = Client::new(Duration::from_secs(2), None)?;
        for size in [0, MEDIA_MIN_BYTES - 1, MEDIA_MAX_BYTES + 1] {
            let (result, _) = client.upload_media(&url, "a.md", &vec![b'x'; size]);
            match result {
                Err(SendError::MediaSize(n)) => assert_eq!(n, size),
                other => panic!("{size} bytes: {other:?}"),
            }
        }
        let (result, _) = client.upload_media(&url, "a.md", b"12345");
        match result {
            Err(e @ SendError::Transport(_)) => {
                assert!(!e.to_string().contains("key=K"), "the key in an error: {e}")
            }
            other => panic!("5 bytes to a closed port: {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn upload_answers_and_file_body() {
        let ok = br#"{"errcode":0,"errmsg":"ok","type":"file","media_id":"3a8asd892","created_at":"1380000000"}"#;
        assert_eq!(parse_upload_answer(ok).ok().as_deref(), Some("3a8asd892"));
        let class = |b: &[u8]| parse_upload_answer(b).err().map(|e| e.class());
        assert_eq!(class(br#"{"errcode":45009,"errmsg":"freq"}"#), Some(Class::RateLimited));
        assert_eq!(class(br#"{"errcode":-1}"#), Some(Class::Retry));
        assert_eq!(class(br#"{"errcode":93000}"#), Some(Class::Permanent));
        assert_eq!(class(br#"{"errcode":0}"#), Some(Class::Retry), "no media_id: garbled");
        assert_eq!(SendError::MediaSize(4).class(), Class::Permanent);
        let v: Value = serde_json::from_str(&file_body("m1")).unwrap_or_default();
        assert_eq!(v, json!({"msgtype": "file", "file": {"media_id": "m1"}}));
    }

    #[test]
    fn markdown_body_is_valid_json() {
        let body = markdown_body("a \"quote\" and 告警\n");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["markdown"]["content"], "a \"quote\" and 告警\n");
        assert_eq!(v["msgtype"], "markdown");
    }
}
